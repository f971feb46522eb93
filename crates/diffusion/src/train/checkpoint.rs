//! Safetensors files that are written atomically and read with errors naming the tensor, and
//! the pieces of the checkpoint protocol of [`train`](super::train): durable writes, the run
//! lock and named probe points.
//!
//! - [`write_atomic`] writes to a temporary file in the same directory, syncs it, renames it over
//!   the target and syncs the directory, so a crash leaves either the old file or the new one,
//!   never half of one, and a completed write survives a power cut. A write that fails (a full
//!   disk, a file-size limit) removes the temporary file and leaves the target as it was.
//! - [`write_safetensors`] serializes in memory and writes through [`write_atomic`].
//! - [`read_safetensors`] checks the header before handing the file to candle: a file that is not
//!   safetensors, a truncated file (the first tensor whose bytes are missing is named) and, with a
//!   [`Manifest`], a tensor whose bytes changed since it was written (checksum) or whose shape or
//!   dtype differs all get an [`Error::Checkpoint`] that says which tensor and how.
//! - A [`Manifest`] (names, dtypes, shapes and a 64-bit FNV-1a checksum per tensor) is the JSON
//!   sidecar's record of a file.
//! - The run lock (`DIR/train.lock`) is an OS advisory lock (`flock` on Unix, `LockFileEx` on
//!   Windows, through [`std::fs::File::try_lock`]) held by a training run for its whole life: a
//!   second run on the same directory is refused, and the lock of a killed run vanishes with its
//!   process, so the file it leaves behind never blocks a resume.
//! - [`set_probe`] installs a function called at every named step of the protocol (after each
//!   half of a file's bytes, after its sync, after each rename). Nothing is called unless one is
//!   installed; fault-injection tests use it to stop a process at an exact point of a write and
//!   kill it there.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::nn::store::fnv1a;
use crate::{Error, Result};

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A function called with the name of each probe point of the checkpoint protocol as a run
/// reaches it (see [`set_probe`]).
pub type Probe = dyn Fn(&str) + Send + Sync;

static PROBE: OnceLock<Box<Probe>> = OnceLock::new();

/// Installs `probe`, to be called with the name of every probe point reached from now on, in
/// this process: `step` after each optimizer step; `FILE:half` after the first half of a file's
/// bytes and `FILE:synced` after its sync, where `FILE` is the file written (`model.json.tmp`
/// for an atomic write of `model.json`, `checkpoint.tmp/state.json` inside the staged
/// checkpoint); `FILE:renamed` after an atomic write's rename (`model.json:renamed`);
/// `loss log:half` inside a row of the loss log, `loss log:truncated` after a resume cut it back
/// to the checkpoint; `checkpoint.tmp:created`, `checkpoint:retired` (the live checkpoint
/// renamed to `checkpoint.old`), `checkpoint:committed` (the new one renamed into place),
/// `checkpoint.old:removed`; `lock:acquired`.
///
/// Meant for fault-injection tests (a probe that blocks lets a test kill the process at that
/// exact point). Returns `false`, installing nothing, if a probe is already installed.
pub fn set_probe(probe: Box<Probe>) -> bool {
    PROBE.set(probe).is_ok()
}

/// Reports the probe point `name` to the installed probe, if any (the name is only formatted
/// when one is installed).
pub(crate) fn probe(name: fmt::Arguments<'_>) {
    if let Some(p) = PROBE.get() {
        p(&name.to_string());
    }
}

/// The name of `path` for probe points: its last two components (`checkpoint.tmp/state.json`)
/// when it sits in a `.tmp` directory, else its file name.
fn probe_name(path: &Path) -> String {
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let dir = path
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned());
    match (dir, file) {
        (Some(d), Some(f)) if d.ends_with(".tmp") => format!("{d}/{f}"),
        (_, Some(f)) => f,
        _ => path.display().to_string(),
    }
}

/// Syncs directory `dir`, making the entries created, renamed or removed in it durable (a no-op
/// where directories cannot be opened as files).
///
/// # Errors
///
/// [`Error::Io`] if the sync fails.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(io_err(dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Creates (or truncates) `path`, writes `contents` in two halves (a probe point between them)
/// and syncs it. The file is complete and durable on success, of any length on failure.
///
/// # Errors
///
/// [`Error::Io`] if the file cannot be created, written or synced.
pub(crate) fn write_synced(path: &Path, contents: &[u8]) -> Result<()> {
    let name = probe_name(path);
    let mut f = fs::File::create(path).map_err(io_err(path))?;
    let (head, tail) = contents.split_at(contents.len() / 2);
    f.write_all(head).map_err(io_err(path))?;
    probe(format_args!("{name}:half"));
    f.write_all(tail).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    probe(format_args!("{name}:synced"));
    Ok(())
}

/// Writes `contents` to `path` atomically and durably: a temporary file `PATH.tmp` written and
/// synced, renamed over `path`, then the directory synced. On failure the temporary file is
/// removed and `path` is left as it was.
///
/// # Errors
///
/// [`Error::Io`] if the file cannot be written or renamed, or the directory synced.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    // Errors name the file asked for, not its temporary twin.
    let written = write_synced(&tmp, contents)
        .map_err(|e| match e {
            Error::Io { source, .. } => io_err(path)(source),
            other => other,
        })
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err(path)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    probe(format_args!("{}:renamed", probe_name(path)));
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The bytes of a safetensors file holding `tensors`, and its [`Manifest`].
///
/// # Errors
///
/// [`Error::Candle`] if a tensor cannot be serialized.
pub(crate) fn serialize_safetensors(tensors: &[(String, Tensor)]) -> Result<(Vec<u8>, Manifest)> {
    let bytes = safetensors::tensor::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), None)
        .map_err(candle_core::Error::from)?;
    let manifest = Manifest::of_bytes(&bytes, Path::new("(serialized tensors)"))?;
    Ok((bytes, manifest))
}

/// Writes named tensors as a safetensors file, atomically (see [`write_atomic`]), and returns
/// its [`Manifest`].
///
/// # Errors
///
/// [`Error::Io`] if the file cannot be written; [`Error::Candle`] if a tensor cannot be
/// serialized.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<Manifest> {
    let (bytes, manifest) = serialize_safetensors(tensors)?;
    write_atomic(path, &bytes)?;
    Ok(manifest)
}

/// The name of the run lock in a training directory.
pub(crate) const LOCK_FILE: &str = "train.lock";

/// A held run lock: the advisory lock on `DIR/train.lock`, released when this is dropped or the
/// process ends, however it ends.
#[derive(Debug)]
pub(crate) struct RunLock {
    _file: fs::File,
}

/// Takes the run lock of directory `dir` without waiting, and records this process's id in the
/// lock file (for the message another run gets).
///
/// # Errors
///
/// [`Error::Io`] naming the lock file if another process holds it (kind
/// [`std::io::ErrorKind::WouldBlock`], with that process's id when the file records one) or if
/// the file cannot be opened, locked or written.
pub(crate) fn lock_run_dir(dir: &Path) -> Result<RunLock> {
    let path = dir.join(LOCK_FILE);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let holder = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse::<u32>().ok())
                .map_or_else(String::new, |pid| format!(" (process {pid})"));
            return Err(Error::Io {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "another training run{holder} is using this directory; wait for it to \
                         end or choose another output directory"
                    ),
                ),
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(io_err(&path))?;
    probe(format_args!("lock:acquired"));
    Ok(RunLock { _file: file })
}

/// What a sidecar records about one tensor of a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorRecord {
    /// The safetensors dtype name (`F32`, `I64`, …).
    pub dtype: String,
    /// The shape.
    pub shape: Vec<usize>,
    /// FNV-1a 64-bit hash of the tensor's bytes, in hexadecimal.
    pub checksum: String,
}

/// The record of every tensor in a safetensors file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The tensors by name.
    pub tensors: BTreeMap<String, TensorRecord>,
}

/// The parsed header of a safetensors file: tensor name → (dtype, shape, data offsets), and the
/// size of the data section.
struct Header {
    entries: BTreeMap<String, (String, Vec<usize>, [usize; 2])>,
    data_start: usize,
}

fn parse_header(bytes: &[u8], path: &Path) -> Result<Header> {
    let bad = |msg: String| Error::Checkpoint(format!("{}: {msg}", path.display()));
    if bytes.len() < 8 {
        return Err(bad(format!(
            "not a safetensors file ({} bytes, shorter than the 8-byte header length)",
            bytes.len()
        )));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(len_bytes);
    if n > (bytes.len() - 8) as u64 {
        return Err(bad(format!(
            "truncated or not a safetensors file: the header claims {n} bytes, the file has {}",
            bytes.len() - 8
        )));
    }
    let n = n as usize;
    let json: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])
        .map_err(|e| bad(format!("the header is not valid JSON ({e})")))?;
    let obj = json
        .as_object()
        .ok_or_else(|| bad("the header is not a JSON object".to_string()))?;
    let mut entries = BTreeMap::new();
    for (name, v) in obj {
        if name == "__metadata__" {
            continue;
        }
        let field = |k: &str| {
            v.get(k)
                .ok_or_else(|| bad(format!("tensor `{name}`: the header lacks `{k}`")))
        };
        let dtype = field("dtype")?
            .as_str()
            .ok_or_else(|| bad(format!("tensor `{name}`: dtype is not a string")))?
            .to_string();
        let as_usizes = |val: &serde_json::Value, what: &str| -> Result<Vec<usize>> {
            val.as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_u64().map(|u| u as usize))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| bad(format!("tensor `{name}`: {what} is not a list of integers")))
        };
        let shape = as_usizes(field("shape")?, "shape")?;
        let offs = as_usizes(field("data_offsets")?, "data_offsets")?;
        if offs.len() != 2 || offs[0] > offs[1] {
            return Err(bad(format!(
                "tensor `{name}`: invalid data_offsets {offs:?}"
            )));
        }
        entries.insert(name.clone(), (dtype, shape, [offs[0], offs[1]]));
    }
    let data_start = 8 + n;
    let available = bytes.len() - data_start;
    // Report the truncated tensor that comes first in the file.
    let mut by_offset: Vec<_> = entries.iter().collect();
    by_offset.sort_by_key(|(_, (_, _, o))| o[0]);
    for (name, (_, _, o)) in by_offset {
        if o[1] > available {
            return Err(bad(format!(
                "tensor `{name}` is truncated: it needs bytes {}..{} of the data section, the \
                 file has {available}",
                o[0], o[1]
            )));
        }
    }
    Ok(Header {
        entries,
        data_start,
    })
}

impl Manifest {
    /// The manifest of the safetensors file held in `bytes` (`path` is only for messages).
    ///
    /// # Errors
    ///
    /// [`Error::Checkpoint`] if the bytes are not a complete safetensors file.
    pub fn of_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let header = parse_header(bytes, path)?;
        let tensors = header
            .entries
            .into_iter()
            .map(|(name, (dtype, shape, o))| {
                let data = &bytes[header.data_start + o[0]..header.data_start + o[1]];
                let checksum = format!("{:016x}", fnv1a(data));
                (
                    name,
                    TensorRecord {
                        dtype,
                        shape,
                        checksum,
                    },
                )
            })
            .collect();
        Ok(Self { tensors })
    }

    /// Checks the file's actual manifest against this one.
    fn verify(&self, actual: &Manifest, path: &Path) -> Result<()> {
        let bad = |msg: String| Error::Checkpoint(format!("{}: {msg}", path.display()));
        for (name, want) in &self.tensors {
            let got = actual
                .tensors
                .get(name)
                .ok_or_else(|| bad(format!("tensor `{name}` is missing")))?;
            if got.dtype != want.dtype || got.shape != want.shape {
                return Err(bad(format!(
                    "tensor `{name}` is {} {:?}, the sidecar records {} {:?}",
                    got.dtype, got.shape, want.dtype, want.shape
                )));
            }
            if got.checksum != want.checksum {
                return Err(bad(format!(
                    "tensor `{name}` is corrupt: its checksum {} differs from the recorded {}",
                    got.checksum, want.checksum
                )));
            }
        }
        if let Some(extra) = actual
            .tensors
            .keys()
            .find(|k| !self.tensors.contains_key(*k))
        {
            return Err(bad(format!(
                "tensor `{extra}` is not recorded in the sidecar (mismatched files?)"
            )));
        }
        Ok(())
    }
}

/// Reads a safetensors file into named tensors on `device`, checking its header first and, when
/// `expected` is given, every tensor's dtype, shape and checksum against it.
///
/// # Errors
///
/// [`Error::Io`] if the file cannot be read; [`Error::Checkpoint`] naming the offending tensor
/// if the file is malformed, truncated or differs from `expected`.
pub fn read_safetensors(
    path: &Path,
    expected: Option<&Manifest>,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let actual = Manifest::of_bytes(&bytes, path)?;
    if let Some(want) = expected {
        want.verify(&actual, path)?;
    }
    candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("recompose-ckpt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// The run lock is exclusive while held (a second open description of the file is refused
    /// with the holder's process id) and free again once dropped.
    #[test]
    fn the_run_lock_is_exclusive_until_dropped() -> Result<()> {
        let dir = scratch("lock");
        let held = lock_run_dir(&dir)?;
        let err = lock_run_dir(&dir).unwrap_err();
        match &err {
            Error::Io { path, source } => {
                assert_eq!(path, &dir.join(LOCK_FILE));
                assert_eq!(source.kind(), std::io::ErrorKind::WouldBlock);
            }
            other => panic!("{other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(&format!("process {}", std::process::id())),
            "{text}"
        );
        assert!(err.is_bad_input());
        drop(held);
        drop(lock_run_dir(&dir)?);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    /// An atomic write replaces the file whole, leaves no temporary file, and one that cannot
    /// complete (here: its temporary file's name is taken by a directory) leaves the old
    /// contents.
    #[test]
    fn atomic_writes_replace_whole_files() -> Result<()> {
        let dir = scratch("atomic");
        let path = dir.join("a.json");
        write_atomic(&path, b"old")?;
        write_atomic(&path, b"new contents")?;
        assert_eq!(fs::read(&path).map_err(io_err(&path))?, b"new contents");
        assert!(!tmp_path(&path).exists());
        fs::create_dir(tmp_path(&path)).map_err(io_err(&path))?;
        assert!(write_atomic(&path, b"never").is_err());
        assert_eq!(fs::read(&path).map_err(io_err(&path))?, b"new contents");
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn round_trip_and_named_errors() -> Result<()> {
        let dir = scratch("rt");
        let path = dir.join("w.safetensors");
        let a = Tensor::arange(0f32, 12.0, &Device::Cpu)?.reshape((3, 4))?;
        let b = Tensor::ones(5, DType::F32, &Device::Cpu)?;
        let m = write_safetensors(&path, &[("a".into(), a.clone()), ("b".into(), b)])?;
        let back = read_safetensors(&path, Some(&m), &Device::Cpu)?;
        assert_eq!(back["a"].to_vec2::<f32>()?, a.to_vec2::<f32>()?);
        assert!(!tmp_path(&path).exists());

        // Flip one byte inside the last tensor's data: the checksum names it.
        let mut bytes = fs::read(&path).map_err(io_err(&path))?;
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        fs::write(&path, &bytes).map_err(io_err(&path))?;
        let err = read_safetensors(&path, Some(&m), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("corrupt") && err.contains('`'), "{err}");

        // Truncate: the tensor whose bytes are cut is named.
        fs::write(&path, &bytes[..n - 3]).map_err(io_err(&path))?;
        let err = read_safetensors(&path, None, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("truncated") && err.contains("tensor `"),
            "{err}"
        );

        fs::write(&path, b"garbage").map_err(io_err(&path))?;
        let err = read_safetensors(&path, None, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}

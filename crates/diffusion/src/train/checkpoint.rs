//! Safetensors files that are written atomically and read with errors naming the tensor.
//!
//! - [`write_safetensors`] writes to a temporary file in the same directory, syncs it and renames
//!   it over the target, so a crash leaves either the old file or the new one, never half of one.
//! - [`read_safetensors`] checks the header before handing the file to candle: a file that is not
//!   safetensors, a truncated file (the first tensor whose bytes are missing is named) and, with a
//!   [`Manifest`], a tensor whose bytes changed since it was written (checksum) or whose shape or
//!   dtype differs all get an [`Error::Checkpoint`] that says which tensor and how.
//! - A [`Manifest`] (names, dtypes, shapes and a 64-bit FNV-1a checksum per tensor) is the JSON
//!   sidecar's record of a file.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

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

/// Writes `contents` to `path` atomically (temporary file, fsync, rename).
///
/// # Errors
///
/// [`Error::Io`] if the file cannot be written or renamed.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(contents).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes named tensors as a safetensors file, atomically, and returns its [`Manifest`].
///
/// # Errors
///
/// [`Error::Io`] if the file cannot be written; [`Error::Candle`] if a tensor cannot be
/// serialized.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<Manifest> {
    let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
    let tmp = tmp_path(path);
    candle_core::safetensors::save(&map, &tmp)?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&tmp))?;
    let bytes = fs::read(&tmp).map_err(io_err(&tmp))?;
    let manifest = Manifest::of_bytes(&bytes, &tmp)?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(manifest)
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

//! Structured mutation of seed inputs: the input generator of the mutation engine.
//!
//! Every mutation is drawn from an explicitly seeded [`SeededRng`]. Besides the generic byte
//! edits of mutation fuzzers (bit flips, interesting integers, deletions, duplications,
//! truncations, splices with another corpus entry), three format-aware families reach past the
//! first checks of the readers:
//!
//! - safetensors: the 8-byte header length and the JSON header are rewritten (a tensor's shape
//!   set to 10¹² elements or `usize::MAX`, reversed or huge `data_offsets`, another or unknown
//!   `dtype`, a removed field), and `f32` data words become NaN or ±∞;
//! - text (TOML, JSON, expressions): a number becomes an extreme one (`1e308`, `nan`,
//!   `18446744073709551615`, …), a dictionary token is inserted, a line is repeated or removed,
//!   a bracket is nested thousands of times;
//! - PNG: the chunks are rewritten with their CRC recomputed (the width and height of `IHDR`
//!   among them), so that the decoder accepts the chunk and reads the mutated value.

use rand::Rng;
use recompose_core::random::SeededRng;
use serde_json::Value;

/// Which format-aware mutations apply to a target's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Safetensors files.
    Safetensors,
    /// UTF-8 text (TOML, JSON, expressions).
    Text,
    /// PNG images.
    Png,
}

/// Integers that sit on the edges of the ranges readers check.
const INTERESTING_U64: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0xff,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    1_000_000_000_000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
    u64::MAX - 7,
];

/// Number spellings for the text mutations.
const NUMBERS: [&str; 16] = [
    "0",
    "-1",
    "1",
    "-0",
    "1e308",
    "-1e308",
    "1e-320",
    "nan",
    "inf",
    "-inf",
    "NaN",
    "18446744073709551615",
    "18446744073709551616",
    "1000000000000",
    "4294967296",
    "0.5",
];

/// Tokens inserted by the text mutations: the punctuation and keywords of TOML, JSON and the
/// composition language, and the field names of the run configurations.
const TOKENS: [&str; 40] = [
    "(",
    ")",
    " AND ",
    " OR ",
    " NOT ",
    "*",
    "[",
    "]",
    "{",
    "}",
    "=",
    ",",
    ":",
    "\"",
    "'''",
    "\n",
    "[[",
    "]]",
    "#",
    "\\u0000",
    "é",
    "\u{0}",
    "[model]\n",
    "[decomp]\n",
    "[data]\n",
    "[train]\n",
    "[diffusion]\n",
    "kind = \"unet\"\n",
    "kind = \"mlp\"\n",
    "kind = \"image_folder\"\n",
    "hidden = ",
    "num_timesteps = ",
    "image_size = ",
    "channel_mult = [",
    "steps = ",
    "batch_size = ",
    "\"shape\":",
    "\"dtype\":",
    "\"data_offsets\":",
    "\"step\":",
];

/// The safetensors dtype names, and a few that are not.
const DTYPES: [&str; 14] = [
    "F32", "F16", "BF16", "F64", "I64", "I32", "U8", "I8", "BOOL", "U32", "F8_E4M3", "F4", "", "Q4",
];

/// Draws mutants of seed inputs.
#[derive(Debug)]
pub struct Mutator {
    format: Format,
    max_len: usize,
}

impl Mutator {
    /// A mutator for inputs of `format`, its mutants cut to `max_len` bytes.
    pub fn new(format: Format, max_len: usize) -> Self {
        Self { format, max_len }
    }

    /// A mutant of `input`: one to four stacked mutations, `other` serving as the splice
    /// partner.
    pub fn mutate(&self, input: &[u8], other: &[u8], rng: &mut SeededRng) -> Vec<u8> {
        let mut out = input.to_vec();
        // One mutation half of the time, so that a single well-formed change reaches the
        // reader's deeper checks; up to four stacked otherwise.
        let rounds = if rng.random_bool(0.5) {
            1
        } else {
            2 + rng.random_range(0..3usize)
        };
        for _ in 0..rounds {
            // Half of the draws are format-aware.
            if rng.random_bool(0.5) {
                match self.format {
                    Format::Safetensors => safetensors(&mut out, rng),
                    Format::Text => text(&mut out, rng),
                    Format::Png => png(&mut out, rng),
                }
            } else {
                bytes(&mut out, other, rng);
            }
        }
        out.truncate(self.max_len);
        out
    }
}

/// A position in `0..=len`.
fn pos(len: usize, rng: &mut SeededRng) -> usize {
    rng.random_range(0..=len)
}

/// Generic byte edits.
fn bytes(out: &mut Vec<u8>, other: &[u8], rng: &mut SeededRng) {
    let len = out.len();
    match rng.random_range(0..9u32) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            out[i] ^= 1 << rng.random_range(0..8u32);
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            out[i] = [0u8, 0xff, 0x7f, 0x80, b'0', b'9'][rng.random_range(0..6usize)];
        }
        2 if len > 0 => {
            let i = rng.random_range(0..len);
            out[i] = rng.random();
        }
        3 if len > 0 => {
            // Delete a range.
            let a = rng.random_range(0..len);
            let b = (a + 1 + rng.random_range(0..len.min(64))).min(len);
            out.drain(a..b);
        }
        4 if len > 0 => {
            // Duplicate a range in place.
            let a = rng.random_range(0..len);
            let b = (a + 1 + rng.random_range(0..len.min(64))).min(len);
            let piece = out[a..b].to_vec();
            let at = pos(out.len(), rng);
            out.splice(at..at, piece);
        }
        5 => out.truncate(pos(len, rng)),
        6 if !other.is_empty() => {
            // Splice: a prefix of this input, a suffix of the other.
            let a = pos(len, rng);
            let b = rng.random_range(0..other.len());
            out.truncate(a);
            out.extend_from_slice(&other[b..]);
        }
        7 if len >= 8 => {
            // An interesting little-endian integer of 1, 2, 4 or 8 bytes.
            let width = [1usize, 2, 4, 8][rng.random_range(0..4usize)].min(len);
            let at = rng.random_range(0..=len - width);
            let v = INTERESTING_U64[rng.random_range(0..INTERESTING_U64.len())];
            out[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
        }
        _ => {
            let at = pos(len, rng);
            let n = 1 + rng.random_range(0..16usize);
            let fresh: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            out.splice(at..at, fresh);
        }
    }
}

/// The header length and JSON header of a safetensors file, if `data` starts with one.
fn split_safetensors(data: &[u8]) -> Option<(serde_json::Map<String, Value>, &[u8])> {
    let n = u64::from_le_bytes(data.get(..8)?.try_into().ok()?) as usize;
    let header = data.get(8..8usize.checked_add(n)?)?;
    let json: Value = serde_json::from_slice(header).ok()?;
    Some((json.as_object()?.clone(), &data[8 + n..]))
}

fn join_safetensors(header: &serde_json::Map<String, Value>, body: &[u8]) -> Vec<u8> {
    let text = Value::Object(header.clone()).to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(body);
    out
}

/// Safetensors-aware edits; generic byte edits when the header does not parse.
fn safetensors(out: &mut Vec<u8>, rng: &mut SeededRng) {
    let Some((mut header, body)) = split_safetensors(out) else {
        return bytes(out, &[], rng);
    };
    let mut body = body.to_vec();
    let names: Vec<String> = header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let huge = |rng: &mut SeededRng| -> Value {
        let v = [
            1_000_000_000_000u64,
            u64::MAX,
            1 << 40,
            0x7fff_ffff_ffff_ffff,
            0,
        ];
        Value::from(v[rng.random_range(0..v.len())])
    };
    let choice = rng.random_range(0..8u32);
    if names.is_empty() || choice == 7 {
        // The declared header length disagrees with the header.
        let mut bytes_out = join_safetensors(&header, &body);
        let v = INTERESTING_U64[rng.random_range(0..INTERESTING_U64.len())];
        bytes_out[..8].copy_from_slice(&v.to_le_bytes());
        *out = bytes_out;
        return;
    }
    let name = &names[rng.random_range(0..names.len())];
    let entry = header.get_mut(name).and_then(Value::as_object_mut);
    match (choice, entry) {
        (0, Some(e)) => {
            // A shape dimension set to an extreme value, or an extra dimension.
            if let Some(shape) = e.get_mut("shape").and_then(Value::as_array_mut) {
                if shape.is_empty() || rng.random_bool(0.3) {
                    shape.push(huge(rng));
                } else {
                    let i = rng.random_range(0..shape.len());
                    shape[i] = huge(rng);
                }
            }
        }
        (1, Some(e)) => {
            if let Some(offs) = e.get_mut("data_offsets").and_then(Value::as_array_mut) {
                match rng.random_range(0..3u32) {
                    0 => offs.reverse(),
                    1 if !offs.is_empty() => {
                        let i = rng.random_range(0..offs.len());
                        offs[i] = huge(rng);
                    }
                    _ => offs.push(Value::from(1)),
                }
            }
        }
        (2, Some(e)) => {
            let d = DTYPES[rng.random_range(0..DTYPES.len())];
            e.insert("dtype".into(), Value::from(d));
        }
        (3, Some(e)) => {
            let field = ["dtype", "shape", "data_offsets"][rng.random_range(0..3usize)];
            e.remove(field);
        }
        (4, _) if body.len() >= 4 => {
            // Non-finite f32 values in the data.
            let n = 1 + rng.random_range(0..4usize);
            for _ in 0..n {
                let at = 4 * rng.random_range(0..body.len() / 4);
                let v = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX]
                    [rng.random_range(0..4usize)];
                body[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        (5, _) => {
            // A tensor under another name, or a duplicate of one.
            if let Some(v) = header.remove(name) {
                let new = if rng.random_bool(0.5) {
                    format!("{name}.x")
                } else {
                    String::new()
                };
                header.insert(new, v.clone());
                if rng.random_bool(0.5) {
                    header.insert(name.clone(), v);
                }
            }
        }
        (6, _) => {
            header.remove(name);
        }
        _ => return bytes(out, &[], rng),
    }
    *out = join_safetensors(&header, &body);
}

/// Text-aware edits.
fn text(out: &mut Vec<u8>, rng: &mut SeededRng) {
    let len = out.len();
    match rng.random_range(0..6u32) {
        0 => {
            // Replace a run of digits (with sign, point and exponent) by an extreme number.
            let starts: Vec<usize> = (0..len)
                .filter(|&i| out[i].is_ascii_digit() && (i == 0 || !out[i - 1].is_ascii_digit()))
                .collect();
            if starts.is_empty() {
                return bytes(out, &[], rng);
            }
            let a = starts[rng.random_range(0..starts.len())];
            let mut b = a;
            while b < len && (out[b].is_ascii_digit() || b".eE-+".contains(&out[b])) {
                b += 1;
            }
            let n = NUMBERS[rng.random_range(0..NUMBERS.len())];
            out.splice(a..b, n.bytes());
        }
        1 => {
            let t = TOKENS[rng.random_range(0..TOKENS.len())];
            let at = pos(len, rng);
            out.splice(at..at, t.bytes());
        }
        2 => {
            // Repeat or remove a line.
            let lines: Vec<&[u8]> = out.split_inclusive(|&b| b == b'\n').collect();
            if lines.is_empty() {
                return;
            }
            let i = rng.random_range(0..lines.len());
            let mut new: Vec<u8> = Vec::with_capacity(len * 2);
            for (k, l) in lines.iter().enumerate() {
                if k == i && rng.random_bool(0.5) {
                    continue;
                }
                new.extend_from_slice(l);
                if k == i {
                    new.extend_from_slice(l);
                }
            }
            *out = new;
        }
        3 => {
            // Deep nesting: thousands of opening brackets.
            let open = [b'(', b'[', b'{'][rng.random_range(0..3usize)];
            let n = [10usize, 300, 5000, 100_000][rng.random_range(0..4usize)];
            let at = pos(len, rng);
            out.splice(at..at, std::iter::repeat_n(open, n));
            if rng.random_bool(0.5) {
                let close = match open {
                    b'(' => b')',
                    b'[' => b']',
                    _ => b'}',
                };
                let end = out.len();
                out.splice(end..end, std::iter::repeat_n(close, n));
            }
        }
        4 => {
            // A long name or string.
            let at = pos(len, rng);
            let n = [100usize, 10_000][rng.random_range(0..2usize)];
            out.splice(at..at, std::iter::repeat_n(b'a', n));
        }
        _ => bytes(out, &[], rng),
    }
}

/// CRC-32 (IEEE) of PNG chunks.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The chunks of a PNG file as (offset of the length field, data length), if it has the
/// signature and whole chunks.
fn png_chunks(data: &[u8]) -> Option<Vec<(usize, usize)>> {
    if data.get(..8)? != b"\x89PNG\r\n\x1a\n" {
        return None;
    }
    let mut chunks = Vec::new();
    let mut at = 8;
    while at + 12 <= data.len() {
        let n = u32::from_be_bytes(data[at..at + 4].try_into().ok()?) as usize;
        if at + 12 + n > data.len() {
            break;
        }
        chunks.push((at, n));
        at += 12 + n;
    }
    Some(chunks)
}

/// PNG-aware edits: a chunk's data is mutated and its CRC recomputed.
fn png(out: &mut Vec<u8>, rng: &mut SeededRng) {
    let Some(chunks) = png_chunks(out).filter(|c| !c.is_empty()) else {
        return bytes(out, &[], rng);
    };
    let (at, n) = chunks[rng.random_range(0..chunks.len())];
    let data = at + 8..at + 8 + n;
    let is_ihdr = &out[at + 4..at + 8] == b"IHDR";
    if is_ihdr && n >= 13 && rng.random_bool(0.6) {
        // Width, height, bit depth, colour type or interlace method.
        match rng.random_range(0..4u32) {
            0 | 1 => {
                let field = at + 8 + 4 * rng.random_range(0..2usize);
                let v =
                    [0u32, 1, 65_535, 1 << 20, 0x7fff_ffff, u32::MAX][rng.random_range(0..6usize)];
                out[field..field + 4].copy_from_slice(&v.to_be_bytes());
            }
            2 => out[at + 16] = [1u8, 2, 4, 8, 16, 3][rng.random_range(0..6usize)],
            _ => out[at + 17] = [0u8, 2, 3, 4, 6, 5][rng.random_range(0..6usize)],
        }
    } else if n > 0 {
        let mut piece = out[data.clone()].to_vec();
        bytes(&mut piece, &[], rng);
        let new_len = (piece.len() as u32).to_be_bytes();
        out.splice(data.clone(), piece.iter().copied());
        out[at..at + 4].copy_from_slice(&new_len);
    } else {
        return bytes(out, &[], rng);
    }
    let n = u32::from_be_bytes(out[at..at + 4].try_into().expect("4 bytes")) as usize;
    let crc = crc32(&out[at + 4..at + 8 + n]);
    out[at + 8 + n..at + 12 + n].copy_from_slice(&crc.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_png_specification_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn safetensors_headers_round_trip() {
        let header: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#)
                .expect("json");
        let file = join_safetensors(&header, &[0, 0, 128, 63]);
        let (back, body) = split_safetensors(&file).expect("parses");
        assert_eq!(back, header);
        assert_eq!(body, &[0, 0, 128, 63]);
    }

    /// The format-aware safetensors mutations keep a well-formed file often enough: some
    /// mutants still load, some of those with a non-finite value.
    #[test]
    fn safetensors_mutants_still_load_often() {
        let header: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[1],"data_offsets":[16,20]}}"#,
        )
        .expect("json");
        let seed = join_safetensors(&header, &[0u8; 20]);
        let mut rng = recompose_core::random::seeded(5);
        let (mut loaded, mut non_finite) = (0, 0);
        for _ in 0..400 {
            let mut m = seed.clone();
            safetensors(&mut m, &mut rng);
            if let Ok(t) = candle_core::safetensors::load_buffer(&m, &candle_core::Device::Cpu) {
                loaded += 1;
                let bad = t.values().any(|t| {
                    t.flatten_all()
                        .and_then(|t| t.to_vec1::<f32>())
                        .is_ok_and(|v| v.iter().any(|x| !x.is_finite()))
                });
                non_finite += usize::from(bad);
            }
        }
        assert!(
            loaded > 40 && non_finite > 10,
            "{loaded} loaded, {non_finite} non-finite"
        );
    }
}

//! BSC: Binary Spatter Codes (Kanerva 1994, "The Spatter Code for encoding concepts at many levels";
//! Kanerva 1996, "Binary spatter-coding of ordered K-tuples"; Kanerva 2009, "Hyperdimensional
//! computing").
//!
//! Hypervectors are dense random bit strings, stored bit-packed in [`PackedBits`]: a batch of rows,
//! each `⌈D/64⌉` little-endian `u64` words (bit `i` of a row is bit `i % 64` of word `i / 64`). The
//! unused high bits of the last word of a row ("padding") are always zero, so they never reach a
//! result, whatever `D` is.
//!
//! * bind / unbind: XOR (every vector is its own inverse; the zero vector is the identity);
//! * bundle: bit-wise majority; for an even number of inputs, exact ties get a random bit from the
//!   caller's RNG. Counting is bit-sliced (64 coordinates per instruction);
//! * permute: cyclic rotation of the `D` bits;
//! * similarity: `1 − 2·hamming/D`, which is the cosine of the bipolar images `(−1)^bit` (1 for
//!   equal vectors, 0 for unrelated ones, −1 for complements); [`Hamming`] gives raw distances.
//!
//! BSC runs on the CPU; similarities come back as CPU `f32` tensors. [`PackedBits::to_bipolar`] and
//! [`PackedBits::from_bipolar`] convert to and from the equivalent MAP vectors (XOR ↔ product).

use candle_core::{Device, Tensor};
use rand::Rng;
use recompose_core::memory::Estimate;

use crate::model::{Hamming, Vsa};
use crate::util::{
    broadcast_shapes, check_bundle_axis, check_dim, check_indices, check_mask, check_nonempty,
    check_reshape, dense_batch, full_shape, wrap_shift,
};
use crate::{Error, Result};

const WORD: usize = 64;

/// The output batch shape of a broadcast binary operation and the `(a, b)` row pairs it reads.
type RowPairs = (Vec<usize>, Vec<(usize, usize)>);

/// A batch of bit-packed binary hypervectors (the vector type of [`Bsc`]).
///
/// The batch has a shape (like a tensor's leading axes; `[]` for a single vector) and is stored
/// row-major, one row of [`words_per_row`](PackedBits::words_per_row) words per vector. Padding
/// bits beyond `dim` are kept at zero by every constructor and operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PackedBits {
    dim: usize,
    batch: Vec<usize>,
    words: Vec<u64>,
}

/// Number of `u64` words holding `dim` bits.
fn words_for(dim: usize) -> usize {
    dim.div_ceil(WORD)
}

/// Mask of the valid bits of the last word of a row.
fn last_mask(dim: usize) -> u64 {
    match dim % WORD {
        0 => u64::MAX,
        r => (1u64 << r) - 1,
    }
}

impl PackedBits {
    /// All-zero vectors of dimension `dim` with the given batch shape.
    pub fn zeros(dim: usize, batch: &[usize]) -> Self {
        let rows: usize = batch.iter().product();
        Self {
            dim,
            batch: batch.to_vec(),
            words: vec![0; rows * words_for(dim)],
        }
    }

    /// Vectors from packed words (`rows × ⌈dim/64⌉`, row-major). Padding bits in `words` are
    /// cleared.
    pub fn from_words(dim: usize, batch: &[usize], mut words: Vec<u64>) -> Result<Self> {
        check_dim("bsc", dim)?;
        let rows: usize = batch.iter().product();
        let w = words_for(dim);
        if words.len() != rows * w {
            return Err(Error::Shape {
                op: "PackedBits::from_words",
                msg: format!(
                    "batch {batch:?} of {dim}-bit vectors needs {} words, got {}",
                    rows * w,
                    words.len()
                ),
            });
        }
        let mask = last_mask(dim);
        for row in words.chunks_exact_mut(w) {
            if let Some(last) = row.last_mut() {
                *last &= mask;
            }
        }
        Ok(Self {
            dim,
            batch: batch.to_vec(),
            words,
        })
    }

    /// Vectors from one `bool` per bit (`rows × dim`, row-major).
    pub fn from_bools(dim: usize, batch: &[usize], bits: &[bool]) -> Result<Self> {
        check_dim("bsc", dim)?;
        let rows: usize = batch.iter().product();
        if bits.len() != rows * dim {
            return Err(Error::Shape {
                op: "PackedBits::from_bools",
                msg: format!(
                    "batch {batch:?} of {dim}-bit vectors needs {} bits, got {}",
                    rows * dim,
                    bits.len()
                ),
            });
        }
        let w = words_for(dim);
        let mut words = vec![0u64; rows * w];
        for (r, row_bits) in bits.chunks_exact(dim).enumerate() {
            for (i, &b) in row_bits.iter().enumerate() {
                if b {
                    words[r * w + i / WORD] |= 1 << (i % WORD);
                }
            }
        }
        Ok(Self {
            dim,
            batch: batch.to_vec(),
            words,
        })
    }

    /// Vectors from a bipolar (MAP) tensor `[..., D]`: negative coordinates become 1 bits, the
    /// others 0 bits, so that MAP's product corresponds to XOR.
    pub fn from_bipolar(t: &Tensor) -> Result<Self> {
        let dims = t.dims();
        let Some((&dim, batch)) = dims.split_last() else {
            return Err(Error::Shape {
                op: "PackedBits::from_bipolar",
                msg: "expected a tensor of shape [..., D]".into(),
            });
        };
        dense_batch("PackedBits::from_bipolar", t, &[dim])?;
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        let bits: Vec<bool> = values.iter().map(|&x| x < 0.0).collect();
        Self::from_bools(dim, batch, &bits)
    }

    /// The bipolar image `(−1)^bit` as an `f32` tensor `[..., D]` on `device`.
    pub fn to_bipolar(&self, device: &Device) -> Result<Tensor> {
        let v: Vec<f32> = self
            .to_bools()
            .into_iter()
            .map(|b| if b { -1.0 } else { 1.0 })
            .collect();
        Ok(Tensor::from_vec(
            v,
            full_shape(&self.batch, &[self.dim]),
            device,
        )?)
    }

    /// One `bool` per bit (`rows × dim`, row-major).
    pub fn to_bools(&self) -> Vec<bool> {
        let mut out = Vec::with_capacity(self.rows() * self.dim);
        for row in self.row_words() {
            out.extend((0..self.dim).map(|i| (row[i / WORD] >> (i % WORD)) & 1 == 1));
        }
        out
    }

    /// The dimension `D` (bits per vector).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The batch shape.
    pub fn batch_shape(&self) -> &[usize] {
        &self.batch
    }

    /// The number of vectors (the product of the batch shape).
    pub fn rows(&self) -> usize {
        self.batch.iter().product()
    }

    /// Words per vector, `⌈D/64⌉`.
    pub fn words_per_row(&self) -> usize {
        words_for(self.dim)
    }

    /// All words, row-major.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The words of vector `row` (in row-major order over the batch), if it exists.
    pub fn row(&self, row: usize) -> Option<&[u64]> {
        let w = self.words_per_row();
        self.words.get(row * w..(row + 1) * w)
    }

    /// Bit `bit` of vector `row`, if both exist.
    pub fn bit(&self, row: usize, bit: usize) -> Option<bool> {
        if bit >= self.dim {
            return None;
        }
        let r = self.row(row)?;
        Some((r[bit / WORD] >> (bit % WORD)) & 1 == 1)
    }

    /// The number of 1 bits of each vector, row-major.
    pub fn count_ones(&self) -> Vec<u32> {
        self.row_words()
            .map(|r| r.iter().map(|w| w.count_ones()).sum())
            .collect()
    }

    fn row_words(&self) -> impl Iterator<Item = &[u64]> {
        // `max(1)` keeps `chunks_exact` valid; an empty batch has no words at all.
        self.words.chunks_exact(self.words_per_row().max(1))
    }
}

/// The Binary Spatter Code model (bit-packed binary vectors, XOR binding, majority bundling).
///
/// [`Vsa::normalize`] is the identity (every bit string is canonical).
///
/// ```
/// use recompose_vsa::{Bsc, Hamming, Vsa, random::seeded};
///
/// let bsc = Bsc::new(1000)?; // not a multiple of 64: padding bits never leak
/// let mut rng = seeded(3);
/// let xs = bsc.random(&[3], &mut rng)?;
/// let sum = bsc.bundle(&xs, 0, &mut rng)?; // majority of 3
/// let sims = bsc.similarity_matrix(&sum, &xs)?.to_vec1::<f32>()?;
/// assert!(sims.iter().all(|&s| s > 0.3)); // expected 0.5 for each member
/// let x0 = bsc.select(&xs, &[0])?;
/// let d = bsc.hamming(&x0, &bsc.negate(&x0)?)?.to_vec1::<f32>()?;
/// assert_eq!(d, [1000.0]);
/// # Ok::<(), recompose_vsa::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Bsc {
    dim: usize,
    device: Device,
}

impl Bsc {
    /// A BSC model of dimension `dim` (any positive value; the last word of each row is padded).
    pub fn new(dim: usize) -> Result<Self> {
        check_dim("bsc", dim)?;
        Ok(Self {
            dim,
            device: Device::Cpu,
        })
    }

    fn w(&self) -> usize {
        words_for(self.dim)
    }

    fn check(&self, op: &'static str, v: &PackedBits) -> Result<()> {
        if v.dim != self.dim {
            return Err(Error::DimMismatch {
                op,
                expected: self.dim,
                got: v.dim,
            });
        }
        Ok(())
    }

    /// Row index pairs for a broadcast binary operation, and the output batch shape.
    fn pair_rows(&self, op: &'static str, a: &PackedBits, b: &PackedBits) -> Result<RowPairs> {
        self.check(op, a)?;
        self.check(op, b)?;
        let out = broadcast_shapes(op, &a.batch, &b.batch)?;
        if a.batch == b.batch {
            return Ok((out, (0..a.rows()).map(|r| (r, r)).collect()));
        }
        let ia = broadcast_index(&a.batch, &out);
        let ib = broadcast_index(&b.batch, &out);
        Ok((out, ia.into_iter().zip(ib).collect()))
    }

    /// Hamming distances of broadcast pairs.
    fn distances(
        &self,
        op: &'static str,
        a: &PackedBits,
        b: &PackedBits,
    ) -> Result<(Vec<usize>, Vec<u32>)> {
        let (out, pairs) = self.pair_rows(op, a, b)?;
        let w = self.w();
        let d = pairs
            .iter()
            .map(|&(i, j)| xor_popcount(&a.words[i * w..(i + 1) * w], &b.words[j * w..(j + 1) * w]))
            .collect();
        Ok((out, d))
    }

    fn tensor(&self, values: Vec<f32>, shape: Vec<usize>) -> Result<Tensor> {
        Ok(Tensor::from_vec(values, shape, &self.device)?)
    }

    fn map_rows(&self, v: &PackedBits, f: impl Fn(&[u64], &mut [u64])) -> PackedBits {
        let w = self.w();
        let mut words = vec![0u64; v.words.len()];
        for (src, dst) in v.words.chunks_exact(w).zip(words.chunks_exact_mut(w)) {
            f(src, dst);
        }
        PackedBits {
            dim: self.dim,
            batch: v.batch.clone(),
            words,
        }
    }
}

/// `popcount(a XOR b)` over two rows.
fn xor_popcount(a: &[u64], b: &[u64]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// For every row of a batch of shape `out`, the row of a batch of shape `from` (broadcastable to
/// `out`) that it reads.
fn broadcast_index(from: &[usize], out: &[usize]) -> Vec<usize> {
    let rank = out.len();
    let offset = rank - from.len();
    // Row-major strides of `from`, aligned to `out`, zero where `from` is broadcast.
    let mut strides = vec![0usize; rank];
    let mut s = 1;
    for i in (0..from.len()).rev() {
        if from[i] != 1 {
            strides[i + offset] = s;
        }
        s *= from[i];
    }
    let total: usize = out.iter().product();
    let mut idx = vec![0usize; rank];
    let mut res = Vec::with_capacity(total);
    for _ in 0..total {
        res.push(idx.iter().zip(&strides).map(|(i, s)| i * s).sum());
        for ax in (0..rank).rev() {
            idx[ax] += 1;
            if idx[ax] < out[ax] {
                break;
            }
            idx[ax] = 0;
        }
    }
    res
}

/// `dst = (src << s) mod 2^dim` for rows of `words_for(dim)` words (src padding must be zero).
fn shl_into(src: &[u64], s: usize, dst: &mut [u64]) {
    let (ws, bs) = (s / WORD, s % WORD);
    for j in 0..dst.len() {
        let mut v = 0;
        if j >= ws {
            v = src[j - ws] << bs;
            if bs > 0 && j > ws {
                v |= src[j - ws - 1] >> (WORD - bs);
            }
        }
        dst[j] = v;
    }
}

/// `dst |= src >> s` for rows of equal length.
fn shr_or_into(src: &[u64], s: usize, dst: &mut [u64]) {
    let (ws, bs) = (s / WORD, s % WORD);
    let n = src.len();
    for j in 0..dst.len() {
        if j + ws < n {
            let mut v = src[j + ws] >> bs;
            if bs > 0 && j + ws + 1 < n {
                v |= src[j + ws + 1] << (WORD - bs);
            }
            dst[j] |= v;
        }
    }
}

/// Bit-sliced counter: adds `x` to the per-bit counts held in `planes` (plane `p` holds bit `p`
/// of the count of every coordinate).
fn add_to_planes(planes: &mut [u64], x: u64) {
    let mut carry = x;
    for p in planes.iter_mut() {
        if carry == 0 {
            break;
        }
        let c = *p & carry;
        *p ^= carry;
        carry = c;
    }
}

/// Per-bit comparison of bit-sliced counts with a constant `t`: returns `(count > t, count == t)`.
fn compare_planes(planes: &[u64], t: usize) -> (u64, u64) {
    let mut gt = 0u64;
    let mut eq = u64::MAX;
    for (j, &p) in planes.iter().enumerate().rev() {
        if (t >> j) & 1 == 1 {
            eq &= p;
        } else {
            gt |= eq & p;
            eq &= !p;
        }
    }
    (gt, eq)
}

impl Vsa for Bsc {
    type Vector = PackedBits;

    fn name(&self) -> &'static str {
        "bsc"
    }

    fn dim(&self) -> usize {
        self.dim
    }

    /// Always the CPU.
    fn device(&self) -> &Device {
        &self.device
    }

    fn batch_shape(&self, v: &PackedBits) -> Result<Vec<usize>> {
        self.check("bsc", v)?;
        Ok(v.batch.clone())
    }

    /// The packed words, `count`·⌈D/64⌉·8 bytes.
    fn random_bytes(&self, count: usize) -> Estimate {
        Estimate::array(&[count, self.w()], 8)
    }

    fn random<R: Rng + ?Sized>(&self, batch: &[usize], rng: &mut R) -> Result<PackedBits> {
        let mut v = PackedBits::zeros(self.dim, batch);
        let mask = last_mask(self.dim);
        let w = self.w();
        for row in v.words.chunks_exact_mut(w) {
            for word in row.iter_mut() {
                *word = rng.random();
            }
            if let Some(last) = row.last_mut() {
                *last &= mask;
            }
        }
        Ok(v)
    }

    /// The all-zero vectors.
    fn identity(&self, batch: &[usize]) -> Result<PackedBits> {
        Ok(PackedBits::zeros(self.dim, batch))
    }

    /// XOR.
    fn bind(&self, a: &PackedBits, b: &PackedBits) -> Result<PackedBits> {
        let (out, pairs) = self.pair_rows("bsc.bind", a, b)?;
        let w = self.w();
        let mut words = Vec::with_capacity(pairs.len() * w);
        for (i, j) in pairs {
            let (ra, rb) = (&a.words[i * w..(i + 1) * w], &b.words[j * w..(j + 1) * w]);
            words.extend(ra.iter().zip(rb).map(|(x, y)| x ^ y));
        }
        Ok(PackedBits {
            dim: self.dim,
            batch: out,
            words,
        })
    }

    /// XOR (binding is self-inverse).
    fn unbind(&self, bound: &PackedBits, key: &PackedBits) -> Result<PackedBits> {
        self.bind(bound, key)
    }

    /// Every vector is its own inverse.
    fn inverse(&self, a: &PackedBits) -> Result<PackedBits> {
        self.check("bsc.inverse", a)?;
        Ok(a.clone())
    }

    /// Bit-wise majority; ties (even counts) are broken with random bits from `rng`.
    fn bundle<R: Rng + ?Sized>(
        &self,
        xs: &PackedBits,
        axis: usize,
        rng: &mut R,
    ) -> Result<PackedBits> {
        self.check("bsc.bundle", xs)?;
        let n = check_bundle_axis("bsc.bundle", &xs.batch, axis)?;
        let outer: usize = xs.batch[..axis].iter().product();
        let inner: usize = xs.batch[axis + 1..].iter().product();
        let mut out_batch = xs.batch.clone();
        out_batch.remove(axis);
        let w = self.w();
        let mask = last_mask(self.dim);
        let nplanes = (usize::BITS - n.leading_zeros()) as usize;
        let threshold = n / 2;
        let even = n % 2 == 0;
        let mut planes = vec![0u64; nplanes];
        let mut words = vec![0u64; outer * inner * w];
        for o in 0..outer {
            for i in 0..inner {
                let dst = (o * inner + i) * w;
                for k in 0..w {
                    planes.fill(0);
                    for m in 0..n {
                        let row = (o * n + m) * inner + i;
                        add_to_planes(&mut planes, xs.words[row * w + k]);
                    }
                    let (gt, eq) = compare_planes(&planes, threshold);
                    let mut bits = gt;
                    if even {
                        let coin: u64 = rng.random();
                        bits |= eq & coin;
                    }
                    if k + 1 == w {
                        bits &= mask;
                    }
                    words[dst + k] = bits;
                }
            }
        }
        Ok(PackedBits {
            dim: self.dim,
            batch: out_batch,
            words,
        })
    }

    /// Rotation of the `D` bits: bit `i` moves to `(i + shift) mod D`.
    fn permute(&self, a: &PackedBits, shift: isize) -> Result<PackedBits> {
        self.check("bsc.permute", a)?;
        let s = wrap_shift(shift, self.dim);
        if s == 0 {
            return Ok(a.clone());
        }
        let dim = self.dim;
        let mask = last_mask(dim);
        Ok(self.map_rows(a, |src, dst| {
            shl_into(src, s, dst);
            if let Some(last) = dst.last_mut() {
                *last &= mask;
            }
            shr_or_into(src, dim - s, dst);
        }))
    }

    /// `D − 2·hamming`: the inner product of the bipolar images.
    fn dot(&self, a: &PackedBits, b: &PackedBits) -> Result<Tensor> {
        let (shape, d) = self.distances("bsc.dot", a, b)?;
        let dim = self.dim as f32;
        self.tensor(d.into_iter().map(|h| dim - 2.0 * h as f32).collect(), shape)
    }

    /// `1 − 2·hamming/D`: the cosine of the bipolar images.
    fn cosine(&self, a: &PackedBits, b: &PackedBits) -> Result<Tensor> {
        let (shape, d) = self.distances("bsc.cosine", a, b)?;
        let dim = self.dim as f32;
        self.tensor(
            d.into_iter().map(|h| 1.0 - 2.0 * h as f32 / dim).collect(),
            shape,
        )
    }

    /// `1 − 2·hamming/D`.
    fn similarity(&self, a: &PackedBits, b: &PackedBits) -> Result<Tensor> {
        self.cosine(a, b)
    }

    fn similarity_matrix(&self, queries: &PackedBits, items: &PackedBits) -> Result<Tensor> {
        let op = "bsc.similarity_matrix";
        self.check(op, queries)?;
        self.check(op, items)?;
        if items.batch.len() != 1 {
            return Err(Error::Shape {
                op,
                msg: format!("items must have batch shape [M], got {:?}", items.batch),
            });
        }
        let m = items.batch[0];
        let w = self.w();
        let dim = self.dim as f32;
        let mut out = Vec::with_capacity(queries.rows() * m);
        for q in queries.words.chunks_exact(w) {
            for it in items.words.chunks_exact(w) {
                out.push(1.0 - 2.0 * xor_popcount(q, it) as f32 / dim);
            }
        }
        let mut shape = queries.batch.clone();
        shape.push(m);
        self.tensor(out, shape)
    }

    /// The identity: bit strings are always canonical.
    fn normalize(&self, a: &PackedBits) -> Result<PackedBits> {
        self.check("bsc.normalize", a)?;
        Ok(a.clone())
    }

    /// Flips the bits where `mask` is set.
    fn flip(&self, a: &PackedBits, mask: &[bool]) -> Result<PackedBits> {
        self.check("bsc.flip", a)?;
        check_mask("bsc.flip", mask, self.dim)?;
        let m = PackedBits::from_bools(self.dim, &[], mask)?;
        Ok(self.map_rows(a, |src, dst| {
            for ((d, s), k) in dst.iter_mut().zip(src).zip(&m.words) {
                *d = s ^ k;
            }
        }))
    }

    /// The complement (padding stays zero).
    fn negate(&self, a: &PackedBits) -> Result<PackedBits> {
        self.check("bsc.negate", a)?;
        let mask = last_mask(self.dim);
        Ok(self.map_rows(a, |src, dst| {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = !s;
            }
            if let Some(last) = dst.last_mut() {
                *last &= mask;
            }
        }))
    }

    fn select(&self, v: &PackedBits, indices: &[usize]) -> Result<PackedBits> {
        let op = "bsc.select";
        self.check(op, v)?;
        let Some(&len) = v.batch.first() else {
            return Err(Error::Shape {
                op,
                msg: "cannot select from a single vector (batch shape [])".into(),
            });
        };
        check_indices(op, indices, len)?;
        let block = v.words.len() / len.max(1);
        let mut words = Vec::with_capacity(block * indices.len());
        for &i in indices {
            words.extend_from_slice(&v.words[i * block..(i + 1) * block]);
        }
        let mut batch = v.batch.clone();
        batch[0] = indices.len();
        Ok(PackedBits {
            dim: self.dim,
            batch,
            words,
        })
    }

    fn concat(&self, parts: &[PackedBits]) -> Result<PackedBits> {
        let op = "bsc.concat";
        check_nonempty(op, parts)?;
        let mut rest: Option<&[usize]> = None;
        let mut n = 0;
        for p in parts {
            self.check(op, p)?;
            let Some((&first, tail)) = p.batch.split_first() else {
                return Err(Error::Shape {
                    op,
                    msg: "cannot concatenate single vectors (batch shape []); stack them instead"
                        .into(),
                });
            };
            match rest {
                None => rest = Some(tail),
                Some(r) if r != tail => {
                    return Err(Error::Shape {
                        op,
                        msg: format!("trailing batch axes differ: {r:?} vs {tail:?}"),
                    });
                }
                Some(_) => {}
            }
            n += first;
        }
        let mut batch = vec![n];
        batch.extend_from_slice(rest.unwrap_or(&[]));
        let words = parts.iter().flat_map(|p| p.words.iter().copied()).collect();
        Ok(PackedBits {
            dim: self.dim,
            batch,
            words,
        })
    }

    fn reshape(&self, v: &PackedBits, batch: &[usize]) -> Result<PackedBits> {
        self.check("bsc.reshape", v)?;
        check_reshape("bsc.reshape", &v.batch, batch)?;
        Ok(PackedBits {
            dim: self.dim,
            batch: batch.to_vec(),
            words: v.words.clone(),
        })
    }
}

impl Hamming for Bsc {
    /// `popcount(a XOR b)`.
    fn hamming(&self, a: &PackedBits, b: &PackedBits) -> Result<Tensor> {
        let (shape, d) = self.distances("bsc.hamming", a, b)?;
        self.tensor(d.into_iter().map(|h| h as f32).collect(), shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotate_ref(bits: &[bool], s: usize) -> Vec<bool> {
        let d = bits.len();
        let mut out = vec![false; d];
        for (i, &b) in bits.iter().enumerate() {
            out[(i + s) % d] = b;
        }
        out
    }

    #[test]
    fn rotation_matches_reference_for_awkward_dims() -> Result<()> {
        let mut rng = crate::random::seeded(5);
        for dim in [1, 3, 63, 64, 65, 127, 128, 129, 200, 1000] {
            let bsc = Bsc::new(dim)?;
            let v = bsc.random(&[2], &mut rng)?;
            for s in [
                0usize,
                1,
                7,
                63,
                64,
                65,
                dim / 2,
                dim.saturating_sub(1),
                dim + 3,
            ] {
                let p = bsc.permute(&v, s as isize)?;
                let bits = v.to_bools();
                let mut expect = Vec::new();
                for row in bits.chunks(dim) {
                    expect.extend(rotate_ref(row, s % dim));
                }
                assert_eq!(p.to_bools(), expect, "dim {dim} shift {s}");
                let padding_clear = p
                    .words
                    .chunks_exact(bsc.w())
                    .all(|r| r[r.len() - 1] & !last_mask(dim) == 0);
                assert!(padding_clear, "dim {dim} shift {s}");
            }
        }
        Ok(())
    }

    #[test]
    fn bit_sliced_majority_matches_counting() -> Result<()> {
        let mut rng = crate::random::seeded(9);
        let bsc = Bsc::new(130)?;
        for n in 1..=9usize {
            let xs = bsc.random(&[n], &mut rng)?;
            let out = bsc.bundle(&xs, 0, &mut rng)?;
            let bits = xs.to_bools();
            let got = out.to_bools();
            for i in 0..130 {
                let c = (0..n).filter(|&m| bits[m * 130 + i]).count();
                if 2 * c != n {
                    assert_eq!(got[i], 2 * c > n, "n {n} bit {i}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn broadcast_index_is_row_major() {
        assert_eq!(broadcast_index(&[1, 3], &[2, 3]), vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(broadcast_index(&[2, 1], &[2, 3]), vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(broadcast_index(&[], &[2]), vec![0, 0]);
    }
}

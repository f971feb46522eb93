//! Codebooks: named item memories and clean-up (Plate 1995, §"clean-up memory"; Kanerva 2009,
//! "Hyperdimensional computing", item memory).
//!
//! A [`Codebook`] holds `M` named codewords as one vector batch of shape `[M]`. Comparing a noisy
//! vector (the result of an unbinding, say) against all codewords and returning the most similar
//! one is *clean-up*; for the dense models the comparison is a single matrix multiplication, and
//! batched queries `[..., D]` give similarity tensors `[..., M]`.

use std::collections::HashMap;

use candle_core::{D as Axis, Tensor};
use rand::Rng;
use recompose_core::memory::{Estimate, MemoryLimit};

use crate::model::Vsa;
use crate::{Error, Result};

/// One clean-up result: a codeword and its similarity to the query.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    /// Index of the codeword in the codebook.
    pub index: usize,
    /// Name of the codeword.
    pub name: String,
    /// Similarity ([`Vsa::similarity`]) between the query and the codeword.
    pub similarity: f32,
}

/// Named codewords of one model: `M ≥ 1` distinct names and a vector batch of shape `[M]`.
///
/// ```
/// use candle_core::Device;
/// use recompose_vsa::{Codebook, Map, Vsa, random::seeded};
///
/// let map = Map::new(2048, &Device::Cpu)?;
/// let mut rng = seeded(0);
/// let colors = Codebook::random(map.clone(), ["red", "green", "blue"], &mut rng)?;
/// assert_eq!(colors.tensor().dims(), &[3, 2048]);
/// // A corrupted "green" (a quarter of its coordinates flipped) still cleans up to "green".
/// let mask: Vec<bool> = (0..2048).map(|i| i % 4 == 0).collect();
/// let noisy = map.flip(&colors.get("green")?, &mask)?;
/// let hit = colors.cleanup(&noisy, 0.3)?.expect("similar enough");
/// assert_eq!(hit.name, "green");
/// assert!((hit.similarity - 0.5).abs() < 1e-6);
/// // An unrelated vector matches nothing.
/// let stranger = map.random(&[], &mut rng)?;
/// assert!(colors.cleanup(&stranger, 0.3)?.is_none());
/// # Ok::<(), recompose_vsa::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Codebook<M: Vsa> {
    model: M,
    names: Vec<String>,
    index: HashMap<String, usize>,
    vectors: M::Vector,
}

impl<M: Vsa> Codebook<M> {
    /// A codebook from names and a vector batch of shape `[names.len()]`.
    ///
    /// Errors on an empty name list, duplicate names, or vectors whose batch shape is not
    /// `[names.len()]`.
    pub fn new<I, S>(model: M, names: I, vectors: M::Vector) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        if names.is_empty() {
            return Err(Error::Config(
                "a codebook needs at least one codeword".into(),
            ));
        }
        let mut index = HashMap::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            if index.insert(n.clone(), i).is_some() {
                return Err(Error::Config(format!("duplicate codeword name {n:?}")));
            }
        }
        let batch = model.batch_shape(&vectors)?;
        if batch != [names.len()] {
            return Err(Error::Shape {
                op: "Codebook::new",
                msg: format!(
                    "{} names need vectors with batch shape [{}], got {batch:?}",
                    names.len(),
                    names.len()
                ),
            });
        }
        Ok(Self {
            model,
            names,
            index,
            vectors,
        })
    }

    /// A codebook of independent random codewords (quasi-orthogonal), drawn from `rng`.
    ///
    /// A codebook whose [`Codebook::memory_estimate`] exceeds the machine's available memory
    /// ([`MemoryLimit::available`]) is refused with [`Error::Memory`] before its vectors are
    /// drawn.
    pub fn random<I, S, R>(model: M, names: I, rng: &mut R) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
        R: Rng + ?Sized,
    {
        Self::random_within(model, names, rng, MemoryLimit::available())
    }

    /// [`Codebook::random`] under an explicit memory limit.
    pub fn random_within<I, S, R>(
        model: M,
        names: I,
        rng: &mut R,
        limit: MemoryLimit,
    ) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
        R: Rng + ?Sized,
    {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        let name_bytes = names.iter().map(String::len).sum::<usize>();
        Self::check_memory(&model, names.len(), name_bytes, limit)?;
        let vectors = model.random(&[names.len()], rng)?;
        Self::new(model, names, vectors)
    }

    /// A codebook of random codewords named `"{prefix}0"`, `"{prefix}1"`, ….
    ///
    /// Checked like [`Codebook::random`], before the names are made.
    pub fn random_numbered<R: Rng + ?Sized>(
        model: M,
        prefix: &str,
        len: usize,
        rng: &mut R,
    ) -> Result<Self> {
        Self::random_numbered_within(model, prefix, len, rng, MemoryLimit::available())
    }

    /// [`Codebook::random_numbered`] under an explicit memory limit.
    pub fn random_numbered_within<R: Rng + ?Sized>(
        model: M,
        prefix: &str,
        len: usize,
        rng: &mut R,
        limit: MemoryLimit,
    ) -> Result<Self> {
        // Every name is the prefix and at most 20 digits.
        let name_bytes = prefix.len().saturating_add(20).saturating_mul(len);
        Self::check_memory(&model, len, name_bytes, limit)?;
        Self::random_within(model, (0..len).map(|i| format!("{prefix}{i}")), rng, limit)
    }

    /// Peak bytes of drawing a codebook of `len` random codewords whose names hold
    /// `name_bytes` bytes of text in all: the model's draw ([`Vsa::random_bytes`]), and the
    /// names twice (the list and the index's keys) with 24 bytes of string header each, plus
    /// 32 bytes of index entry per name.
    pub fn memory_estimate(model: &M, len: usize, name_bytes: usize) -> Estimate {
        model.random_bytes(len)
            + Estimate::bytes(name_bytes as u64) * 2
            + Estimate::array(&[len], 24 * 2 + 32)
    }

    fn check_memory(model: &M, len: usize, name_bytes: usize, limit: MemoryLimit) -> Result<()> {
        limit.check(
            format_args!(
                "a random {} codebook of {len} codewords of dimension {}",
                model.name(),
                model.dim()
            ),
            Self::memory_estimate(model, len, name_bytes),
        )?;
        Ok(())
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The number of codewords `M` (at least 1).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always `false`: codebooks are never empty.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names, in codeword order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The name of codeword `index`, if it exists.
    pub fn name(&self, index: usize) -> Option<&str> {
        self.names.get(index).map(String::as_str)
    }

    /// The index of the codeword called `name`, if any.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The codeword called `name` (a single vector, batch shape `[]`).
    pub fn get(&self, name: &str) -> Result<M::Vector> {
        let i = self
            .index_of(name)
            .ok_or_else(|| Error::UnknownName(name.to_string()))?;
        self.vector(i)
    }

    /// The codewords called `names`, as a batch of shape `[names.len()]`.
    pub fn get_many(&self, names: &[&str]) -> Result<M::Vector> {
        let idx: Vec<usize> = names
            .iter()
            .map(|n| {
                self.index_of(n)
                    .ok_or_else(|| Error::UnknownName((*n).to_string()))
            })
            .collect::<Result<_>>()?;
        self.model.select(&self.vectors, &idx)
    }

    /// Codeword `index` (a single vector, batch shape `[]`).
    pub fn vector(&self, index: usize) -> Result<M::Vector> {
        let one = self.model.select(&self.vectors, &[index])?;
        self.model.reshape(&one, &[])
    }

    /// All codewords, batch shape `[M]`.
    pub fn vectors(&self) -> &M::Vector {
        &self.vectors
    }

    /// Similarities between queries with batch shape `[...]` and every codeword: `[..., M]`.
    pub fn similarities(&self, query: &M::Vector) -> Result<Tensor> {
        self.model.similarity_matrix(query, &self.vectors)
    }

    /// The index of the most similar codeword for each query, as a `u32` tensor with the query
    /// batch shape (computed on the model's device, no host round trip).
    pub fn nearest_indices(&self, query: &M::Vector) -> Result<Tensor> {
        Ok(self.similarities(query)?.argmax(Axis::Minus1)?)
    }

    /// Similarities of a single query (batch shape `[]` or all ones) on the host.
    fn single(&self, op: &'static str, query: &M::Vector) -> Result<Vec<f32>> {
        let batch = self.model.batch_shape(query)?;
        if batch.iter().any(|&b| b != 1) {
            return Err(Error::Shape {
                op,
                msg: format!(
                    "expected a single query vector, got batch shape {batch:?} (use the batched method)"
                ),
            });
        }
        Ok(self.similarities(query)?.flatten_all()?.to_vec1::<f32>()?)
    }

    fn make_match(&self, index: usize, similarity: f32) -> Match {
        Match {
            index,
            name: self.names[index].clone(),
            similarity,
        }
    }

    /// The most similar codeword to a single query.
    pub fn nearest(&self, query: &M::Vector) -> Result<Match> {
        let sims = self.single("Codebook::nearest", query)?;
        let (i, s) = argmax(&sims);
        Ok(self.make_match(i, s))
    }

    /// The most similar codeword for every query of a batch, in row-major order of the batch.
    pub fn nearest_batch(&self, query: &M::Vector) -> Result<Vec<Match>> {
        let sims = self.similarities(query)?;
        let m = self.len();
        let flat = sims.flatten_all()?.to_vec1::<f32>()?;
        Ok(flat
            .chunks_exact(m)
            .map(|row| {
                let (i, s) = argmax(row);
                self.make_match(i, s)
            })
            .collect())
    }

    /// The `k` most similar codewords to a single query, most similar first (ties keep codeword
    /// order). `k` larger than the codebook returns every codeword.
    pub fn top_k(&self, query: &M::Vector, k: usize) -> Result<Vec<Match>> {
        let sims = self.single("Codebook::top_k", query)?;
        let mut order: Vec<usize> = (0..sims.len()).collect();
        order.sort_by(|&a, &b| sims[b].total_cmp(&sims[a]).then(a.cmp(&b)));
        Ok(order
            .into_iter()
            .take(k)
            .map(|i| self.make_match(i, sims[i]))
            .collect())
    }

    /// Clean-up of a single query: the most similar codeword if its similarity is at least
    /// `threshold`, `None` otherwise.
    pub fn cleanup(&self, query: &M::Vector, threshold: f32) -> Result<Option<Match>> {
        let m = self.nearest(query)?;
        Ok((m.similarity >= threshold).then_some(m))
    }

    /// [`cleanup`](Codebook::cleanup) for every query of a batch, in row-major order.
    pub fn cleanup_batch(&self, query: &M::Vector, threshold: f32) -> Result<Vec<Option<Match>>> {
        Ok(self
            .nearest_batch(query)?
            .into_iter()
            .map(|m| (m.similarity >= threshold).then_some(m))
            .collect())
    }
}

impl<M: Vsa<Vector = Tensor>> Codebook<M> {
    /// The raw codeword tensor (`[M, D]` for MAP and HRR, `[M, 2, D]` for FHRR), for matrix
    /// products in downstream code such as resonator networks.
    pub fn tensor(&self) -> &Tensor {
        &self.vectors
    }
}

/// Index and value of the largest entry (first one on ties; NaN never wins).
fn argmax(v: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, &x) in v.iter().enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    if best.1 == f32::NEG_INFINITY {
        best.1 = v.first().copied().unwrap_or(f32::NAN);
    }
    best
}

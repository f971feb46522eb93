//! The [`Vsa`] trait: the algebra every vector-symbolic architecture provides.
//!
//! A VSA (Gayler 2003, "Vector Symbolic Architectures answer Jackendoff's challenges for cognitive
//! neuroscience"; Kanerva 2009, "Hyperdimensional computing") represents symbols by random
//! high-dimensional vectors and composes them with three operations:
//!
//! * **binding** (`⊗`): produces a vector dissimilar to both operands, invertible with
//!   [`unbind`](Vsa::unbind), and preserving similarity (`sim(a⊗c, b⊗c) ≈ sim(a, b)`);
//! * **bundling** (`+`): superposition; the result is similar to every member;
//! * **permutation** (`ρ`): a fixed reordering of the coordinates that makes a vector dissimilar to
//!   itself and is used to encode order.
//!
//! Random vectors are quasi-orthogonal: their similarity concentrates around 0 with standard
//! deviation about `1/√D`.
//!
//! # Batches
//!
//! Every operation is batched. A *vector batch* has a batch shape (any number of leading axes,
//! possibly none) followed by the model's feature axes; the shape of a batch is reported by
//! [`Vsa::batch_shape`]. Binary operations ([`bind`](Vsa::bind), [`dot`](Vsa::dot), …) broadcast
//! the batch shapes against each other as NumPy does, so a single key `[D]` can be bound to a batch
//! `[N, D]`. Similarities come back as `f32` tensors with the broadcast batch shape.
//!
//! # Similarity conventions
//!
//! [`similarity`](Vsa::similarity) is each model's natural similarity, scaled so that identical
//! vectors score 1 and unrelated (random) vectors score about 0; a threshold therefore means the
//! same thing for every model. [`cosine`](Vsa::cosine) is the cosine of the angle between the vectors
//! viewed as real vectors, and [`dot`](Vsa::dot) the unnormalized inner product.
//!
//! # Randomness
//!
//! All randomness (random vectors, tie-breaks when bundling) comes from a caller-supplied
//! [`rand::Rng`], so results are reproducible from a seed (see [`crate::random::seeded`]).

use std::fmt::Debug;

use candle_core::{Device, Tensor};
use rand::Rng;

use recompose_core::memory::Estimate;

use crate::Result;

/// A vector-symbolic architecture: the hypervector type and its algebra.
///
/// Implemented by [`Map`](crate::Map), [`Bsc`](crate::Bsc), [`Hrr`](crate::Hrr) and
/// [`Fhrr`](crate::Fhrr). A model value carries the dimension `D` and, for the dense models, the
/// candle [`Device`] its vectors live on; it is cheap to clone.
///
/// Methods taking vectors validate their shapes and return [`Error`](crate::Error) on mismatches;
/// they never panic on user input.
pub trait Vsa: Clone + Debug + Send + Sync {
    /// A batch of hypervectors (a candle [`Tensor`] for the dense models, bit-packed words for BSC).
    type Vector: Clone + Debug + Send + Sync;

    /// A short name of the model (`"map"`, `"bsc"`, `"hrr"`, `"fhrr"`).
    fn name(&self) -> &'static str;

    /// The dimension `D` of the hypervectors.
    fn dim(&self) -> usize;

    /// The device the model's vectors live on.
    fn device(&self) -> &Device;

    /// The batch shape of `v` (its leading axes), after checking that its feature axes match the
    /// model.
    fn batch_shape(&self, v: &Self::Vector) -> Result<Vec<usize>>;

    /// Random hypervectors with the given batch shape, drawn from `rng`.
    ///
    /// Independent draws are quasi-orthogonal. The same RNG state always gives the same vectors.
    fn random<R: Rng + ?Sized>(&self, batch: &[usize], rng: &mut R) -> Result<Self::Vector>;

    /// Peak bytes [`random`](Vsa::random) allocates for `count` vectors, the result included.
    /// The default, 2·`count`·D·4, covers an `f32` draw and one transformed copy (HRR's
    /// scaled normal draw); models override it with their own buffers.
    fn random_bytes(&self, count: usize) -> Estimate {
        Estimate::f32s(&[count, self.dim()]) * 2
    }

    /// The identity of binding (`bind(x, identity) = x`), repeated over `batch`.
    fn identity(&self, batch: &[usize]) -> Result<Self::Vector>;

    /// Binds `a` and `b` (batch shapes broadcast).
    fn bind(&self, a: &Self::Vector, b: &Self::Vector) -> Result<Self::Vector>;

    /// Releases `key` from `bound`: `unbind(bind(x, key), key) ≈ x` (exact for MAP, BSC and FHRR on
    /// their canonical vectors; approximate for HRR).
    fn unbind(&self, bound: &Self::Vector, key: &Self::Vector) -> Result<Self::Vector>;

    /// The (possibly approximate) inverse used by [`unbind`](Vsa::unbind):
    /// `unbind(c, k) = bind(c, inverse(k))`.
    fn inverse(&self, a: &Self::Vector) -> Result<Self::Vector>;

    /// Superposes the vectors along batch axis `axis`, removing that axis.
    ///
    /// Models that re-quantize after summing (MAP with sign bundling, BSC) break ties with random
    /// draws from `rng`; the others ignore it. Bundling zero vectors is an error.
    fn bundle<R: Rng + ?Sized>(
        &self,
        xs: &Self::Vector,
        axis: usize,
        rng: &mut R,
    ) -> Result<Self::Vector>;

    /// Applies the cyclic permutation `ρ^shift`: coordinate `i` moves to `(i + shift) mod D`.
    /// Negative shifts rotate the other way.
    fn permute(&self, a: &Self::Vector, shift: isize) -> Result<Self::Vector>;

    /// Inverse of [`permute`](Vsa::permute): `unpermute(permute(a, k), k) = a`.
    fn unpermute(&self, a: &Self::Vector, shift: isize) -> Result<Self::Vector> {
        self.permute(a, shift.wrapping_neg())
    }

    /// Unnormalized inner product of the vectors viewed as real vectors (batch shapes broadcast).
    fn dot(&self, a: &Self::Vector, b: &Self::Vector) -> Result<Tensor>;

    /// Cosine similarity of the vectors viewed as real vectors (batch shapes broadcast). A zero
    /// vector has cosine 0 with everything.
    fn cosine(&self, a: &Self::Vector, b: &Self::Vector) -> Result<Tensor>;

    /// The model's natural similarity (1 for identical vectors, about 0 for unrelated ones).
    fn similarity(&self, a: &Self::Vector, b: &Self::Vector) -> Result<Tensor>;

    /// All-pairs [`similarity`](Vsa::similarity) between a batch of queries with batch shape `[...]`
    /// and a list of `M` items (batch shape `[M]`); the result has shape `[..., M]`.
    ///
    /// The dense models compute it with one matrix multiplication.
    fn similarity_matrix(&self, queries: &Self::Vector, items: &Self::Vector) -> Result<Tensor>;

    /// Maps vectors back onto the model's canonical set (sign for MAP, unit norm for HRR, unit
    /// magnitude per coordinate for FHRR; BSC vectors are always canonical). Deterministic; the
    /// tie rule of each model is documented on its type.
    fn normalize(&self, a: &Self::Vector) -> Result<Self::Vector>;

    /// Negates the coordinates where `mask` is `true` (flips the bit for BSC, multiplies by −1 for
    /// the dense models). `mask` has one entry per dimension. Used by the level encodings.
    fn flip(&self, a: &Self::Vector, mask: &[bool]) -> Result<Self::Vector>;

    /// Negates every coordinate (the complement for BSC). `sim(a, negate(a)) = -1`.
    fn negate(&self, a: &Self::Vector) -> Result<Self::Vector>;

    /// Picks the vectors at `indices` along the first batch axis (the result has that axis of
    /// length `indices.len()`).
    fn select(&self, v: &Self::Vector, indices: &[usize]) -> Result<Self::Vector>;

    /// Concatenates vector batches along their first batch axis (the other batch axes must agree).
    fn concat(&self, parts: &[Self::Vector]) -> Result<Self::Vector>;

    /// Reshapes the batch axes, keeping the number of vectors.
    fn reshape(&self, v: &Self::Vector, batch: &[usize]) -> Result<Self::Vector>;

    /// Stacks vector batches of equal batch shape along a new leading axis.
    fn stack(&self, parts: &[Self::Vector]) -> Result<Self::Vector> {
        let mut expanded = Vec::with_capacity(parts.len());
        for p in parts {
            let batch = self.batch_shape(p)?;
            expanded.push(self.reshape(p, &crate::util::with_leading(1, &batch))?);
        }
        self.concat(&expanded)
    }

    /// Bundles a list of vector batches of equal batch shape (stack, then
    /// [`bundle`](Vsa::bundle) along the new axis).
    fn bundle_all<R: Rng + ?Sized>(
        &self,
        parts: &[Self::Vector],
        rng: &mut R,
    ) -> Result<Self::Vector> {
        let stacked = self.stack(parts)?;
        self.bundle(&stacked, 0, rng)
    }
}

/// Models with a meaningful Hamming distance (binary or bipolar coordinates).
pub trait Hamming: Vsa {
    /// The number of coordinates where `a` and `b` differ (batch shapes broadcast), as `f32`.
    fn hamming(&self, a: &Self::Vector, b: &Self::Vector) -> Result<Tensor>;

    /// [`hamming`](Hamming::hamming) divided by `D`: 0 for equal vectors, about ½ for unrelated
    /// ones, 1 for complements.
    fn normalized_hamming(&self, a: &Self::Vector, b: &Self::Vector) -> Result<Tensor> {
        Ok((self.hamming(a, b)? / self.dim() as f64)?)
    }
}

/// Models whose vectors can be built from phase angles, which is what fractional power encoding
/// needs (see [`FpeEncoder`](crate::FpeEncoder)).
///
/// A vector is defined by `phase_count()` free phases `φ`; vectors built from `x·φ` for real `x`
/// are the real powers of the base vector, and binding adds phases.
pub trait Phasor: Vsa {
    /// The number of free phases defining one vector (`D` for FHRR, `⌊(D−1)/2⌋` for HRR, whose
    /// remaining Fourier phases are fixed by conjugate symmetry).
    fn phase_count(&self) -> usize;

    /// Builds vectors from phases of shape `[..., phase_count()]` (an `f32` tensor).
    fn phase_vectors(&self, phases: &Tensor) -> Result<Self::Vector>;
}

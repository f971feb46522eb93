//! Data structures built from binding, bundling and permutation.
//!
//! * **Records** (role–filler bindings; Plate 1995, "Holographic reduced representations";
//!   Kanerva 2009, "Hyperdimensional computing", §"records"): `r = Σ_k key_k ⊗ value_k`. Unbinding a
//!   key, `unbind(r, key_j) = value_j + noise`, recovers the value after clean-up in a codebook.
//! * **Sequences** (Kanerva 2009; Gayler 2003; Kleyko et al. 2022, "A survey on hyperdimensional
//!   computing aka vector symbolic architectures, part I", §"sequences"): `s = Σ_i ρ^i(x_i)`, where
//!   `ρ` is the model's permutation; `ρ^{−i}(s) = x_i + noise` reads position `i`.
//! * **n-grams** (Joshi, Halseth, Kanerva 2016, "Language geometry using random indexing"):
//!   `ρ^{n−1}(x_0) ⊗ … ⊗ ρ(x_{n−2}) ⊗ x_{n−1}`, a single vector dissimilar to any reordering.
//!
//! The capacity of a bundle is limited: with `K` members the similarity of the noisy read-out to
//! the right codeword is about `1/√K` (MAP-I, HRR) or `√(2/(πK))` (sign/majority bundling), against
//! noise of order `1/√D` from every other codeword.

use rand::Rng;

use crate::codebook::{Codebook, Match};
use crate::model::Vsa;
use crate::{Error, Result};

fn leading_len<M: Vsa>(model: &M, op: &'static str, v: &M::Vector) -> Result<usize> {
    let batch = model.batch_shape(v)?;
    match batch.first() {
        Some(&n) if n > 0 => Ok(n),
        _ => Err(Error::Shape {
            op,
            msg: format!(
                "expected a non-empty list of vectors along the first batch axis, got batch shape {batch:?}"
            ),
        }),
    }
}

/// A record `Σ_k keys_k ⊗ values_k`: `keys` and `values` have batch shapes `[K, ...]` (broadcast
/// against each other) and the pairs are bundled along the first axis.
///
/// ```
/// use candle_core::Device;
/// use recompose_vsa::{Codebook, Fhrr, Vsa, random::seeded, structure};
///
/// let fhrr = Fhrr::new(1024, &Device::Cpu)?;
/// let mut rng = seeded(8);
/// let roles = Codebook::random(fhrr.clone(), ["name", "age", "city"], &mut rng)?;
/// let fillers = Codebook::random(fhrr.clone(), ["ada", "36", "london", "paris"], &mut rng)?;
/// let values = fillers.get_many(&["ada", "36", "london"])?;
/// let person = structure::record(&fhrr, roles.vectors(), &values, &mut rng)?;
/// let city = structure::lookup(&fhrr, &person, &roles.get("city")?)?;
/// assert_eq!(fillers.nearest(&city)?.name, "london");
/// # Ok::<(), recompose_vsa::Error>(())
/// ```
pub fn record<M: Vsa, R: Rng + ?Sized>(
    model: &M,
    keys: &M::Vector,
    values: &M::Vector,
    rng: &mut R,
) -> Result<M::Vector> {
    leading_len(model, "structure::record", keys)?;
    leading_len(model, "structure::record", values)?;
    let pairs = model.bind(keys, values)?;
    model.bundle(&pairs, 0, rng)
}

/// The (noisy) value bound to `key` in `record`: `unbind(record, key)`.
pub fn lookup<M: Vsa>(model: &M, record: &M::Vector, key: &M::Vector) -> Result<M::Vector> {
    model.unbind(record, key)
}

/// A sequence `Σ_i ρ^i(items_i)` of the `N` vectors along the first batch axis of `items`
/// (batch shape `[N, ...]`), bundled with the model's rule.
///
/// ```
/// use candle_core::Device;
/// use recompose_vsa::{Bsc, Codebook, Vsa, random::seeded, structure};
///
/// let bsc = Bsc::new(4096)?;
/// let mut rng = seeded(9);
/// let letters = Codebook::random(bsc.clone(), ["a", "b", "c", "d", "e"], &mut rng)?;
/// let word = letters.get_many(&["c", "a", "b"])?;
/// let seq = structure::sequence(&bsc, &word, &mut rng)?;
/// let second = structure::sequence_item(&bsc, &seq, 1)?;
/// assert_eq!(letters.nearest(&second)?.name, "a");
/// # Ok::<(), recompose_vsa::Error>(())
/// ```
pub fn sequence<M: Vsa, R: Rng + ?Sized>(
    model: &M,
    items: &M::Vector,
    rng: &mut R,
) -> Result<M::Vector> {
    let n = leading_len(model, "structure::sequence", items)?;
    let shifted = (0..n)
        .map(|i| {
            let x = model.select(items, &[i])?;
            model.permute(&x, shift(i)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let all = model.concat(&shifted)?;
    model.bundle(&all, 0, rng)
}

/// The (noisy) item at `position` of a [`sequence`]: `ρ^{−position}(seq)`.
pub fn sequence_item<M: Vsa>(model: &M, seq: &M::Vector, position: usize) -> Result<M::Vector> {
    model.unpermute(seq, shift(position)?)
}

/// The n-gram `ρ^{N−1}(x_0) ⊗ ρ^{N−2}(x_1) ⊗ … ⊗ x_{N−1}` of the `N` vectors along the first
/// batch axis of `items`. For MAP, BSC and FHRR it is dissimilar to the n-gram of any other order
/// of the same items.
///
/// For HRR it is not: the cyclic shift is convolution with a shifted impulse, so it commutes with
/// binding and every order gives `ρ^{N(N−1)/2}(x_0 ⊛ … ⊛ x_{N−1})`. Encode order in HRR with
/// [`sequence`] (bundling keeps the shifted terms apart) or by binding with position vectors.
pub fn ngram<M: Vsa>(model: &M, items: &M::Vector) -> Result<M::Vector> {
    let n = leading_len(model, "structure::ngram", items)?;
    let mut acc: Option<M::Vector> = None;
    for i in 0..n {
        let x = model.select(items, &[i])?;
        let x = model.permute(&x, shift(n - 1 - i)?)?;
        acc = Some(match acc {
            None => x,
            Some(a) => model.bind(&a, &x)?,
        });
    }
    let out = acc.ok_or_else(|| Error::Config("empty n-gram".into()))?;
    let mut batch = model.batch_shape(&out)?;
    batch.remove(0);
    model.reshape(&out, &batch)
}

fn shift(i: usize) -> Result<isize> {
    isize::try_from(i).map_err(|_| Error::Config(format!("position {i} too large")))
}

/// Records over named keys and values: encodes `{key: value}` maps and reads them back through
/// clean-up in the value codebook.
///
/// ```
/// use candle_core::Device;
/// use recompose_vsa::{Codebook, Map, RecordCodec, random::seeded};
///
/// let map = Map::new(4096, &Device::Cpu)?;
/// let mut rng = seeded(10);
/// let codec = RecordCodec::new(
///     Codebook::random(map.clone(), ["shape", "color", "size"], &mut rng)?,
///     Codebook::random(map.clone(), ["circle", "square", "red", "blue", "small", "big"], &mut rng)?,
/// )?;
/// let r = codec.encode(&[("shape", "square"), ("color", "red"), ("size", "big")], &mut rng)?;
/// assert_eq!(codec.query(&r, "color")?.name, "red");
/// # Ok::<(), recompose_vsa::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RecordCodec<M: Vsa> {
    keys: Codebook<M>,
    values: Codebook<M>,
}

impl<M: Vsa> RecordCodec<M> {
    /// A codec from a key codebook and a value codebook of the same model dimension.
    pub fn new(keys: Codebook<M>, values: Codebook<M>) -> Result<Self> {
        let (a, b) = (keys.model().dim(), values.model().dim());
        if a != b {
            return Err(Error::DimMismatch {
                op: "RecordCodec::new",
                expected: a,
                got: b,
            });
        }
        Ok(Self { keys, values })
    }

    /// The key codebook.
    pub fn keys(&self) -> &Codebook<M> {
        &self.keys
    }

    /// The value codebook.
    pub fn values(&self) -> &Codebook<M> {
        &self.values
    }

    /// Encodes `(key, value)` pairs (at least one; unknown names are errors).
    pub fn encode<R: Rng + ?Sized>(
        &self,
        pairs: &[(&str, &str)],
        rng: &mut R,
    ) -> Result<M::Vector> {
        if pairs.is_empty() {
            return Err(Error::Config("a record needs at least one field".into()));
        }
        let keys: Vec<&str> = pairs.iter().map(|p| p.0).collect();
        let values: Vec<&str> = pairs.iter().map(|p| p.1).collect();
        let k = self.keys.get_many(&keys)?;
        let v = self.values.get_many(&values)?;
        record(self.keys.model(), &k, &v, rng)
    }

    /// The unbound, not yet cleaned-up value of `key` in a record.
    pub fn raw_value(&self, record: &M::Vector, key: &str) -> Result<M::Vector> {
        lookup(self.keys.model(), record, &self.keys.get(key)?)
    }

    /// The value codeword most similar to the value of `key` in a (single) record.
    pub fn query(&self, record: &M::Vector, key: &str) -> Result<Match> {
        self.values.nearest(&self.raw_value(record, key)?)
    }

    /// Like [`query`](RecordCodec::query), but `None` when the best similarity is below
    /// `threshold` (the key is probably absent).
    pub fn query_cleanup(
        &self,
        record: &M::Vector,
        key: &str,
        threshold: f32,
    ) -> Result<Option<Match>> {
        self.values
            .cleanup(&self.raw_value(record, key)?, threshold)
    }

    /// Every key whose cleaned-up value reaches `threshold`, with that value, in key order.
    pub fn decode(&self, record: &M::Vector, threshold: f32) -> Result<Vec<(String, Match)>> {
        let mut out = Vec::new();
        for key in self.keys.names() {
            if let Some(m) = self.query_cleanup(record, key, threshold)? {
                out.push((key.clone(), m));
            }
        }
        Ok(out)
    }
}

/// Sequences over named items: encodes lists of names with [`sequence`] and reads positions back
/// through clean-up.
#[derive(Debug, Clone)]
pub struct SequenceCodec<M: Vsa> {
    items: Codebook<M>,
}

impl<M: Vsa> SequenceCodec<M> {
    /// A codec over the items of a codebook.
    pub fn new(items: Codebook<M>) -> Self {
        Self { items }
    }

    /// The item codebook.
    pub fn items(&self) -> &Codebook<M> {
        &self.items
    }

    /// Encodes a non-empty list of item names.
    pub fn encode<R: Rng + ?Sized>(&self, names: &[&str], rng: &mut R) -> Result<M::Vector> {
        if names.is_empty() {
            return Err(Error::Config("a sequence needs at least one item".into()));
        }
        let xs = self.items.get_many(names)?;
        sequence(self.items.model(), &xs, rng)
    }

    /// The item most similar to position `position` of a (single) sequence.
    pub fn read(&self, seq: &M::Vector, position: usize) -> Result<Match> {
        self.items
            .nearest(&sequence_item(self.items.model(), seq, position)?)
    }

    /// The first `len` positions of a (single) sequence.
    pub fn decode(&self, seq: &M::Vector, len: usize) -> Result<Vec<Match>> {
        (0..len).map(|i| self.read(seq, i)).collect()
    }
}

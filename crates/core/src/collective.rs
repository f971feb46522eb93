//! Collective operations for data-parallel training: the all-reduce that sums a tensor over the
//! ranks of a group.
//!
//! Data-parallel training runs one replica of the model per rank; each rank draws its own batch
//! (its random stream chosen by its rank), computes its gradients, and the ranks sum them
//! ([`Collective::all_reduce_sum`]) before every optimizer step, so that every replica takes the
//! same step from the mean gradient and the replicas stay equal.
//!
//! - [`Single`]: world size 1, the identity: a training with it is the single-process training.
//! - [`LocalGroup`]: ranks as threads of one process, summing through host memory in rank order
//!   (deterministic; for tests and data-parallel work on one machine's CPU).
//! - `Nccl` (feature `nccl`): one process per GPU over NCCL, the usual launch: each process
//!   gets `RANK` and `WORLD_SIZE` (and `LOCAL_RANK`, its GPU on the machine) in its
//!   environment, and the group's unique id passes from rank 0 to the others through a file
//!   (see `Nccl::join`).

use std::sync::{Arc, Condvar, Mutex};

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// A group of ranks that can sum tensors over all of them.
pub trait Collective: std::fmt::Debug + Send + Sync {
    /// This rank, in `0..world_size`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn world_size(&self) -> usize;

    /// The elementwise sum of `t` over all ranks, on `t`'s device with its shape and dtype.
    /// Every rank must call it with tensors of the same shape, in the same order.
    ///
    /// # Errors
    ///
    /// When the ranks' tensors do not match, or the transport fails.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
}

/// The group of one: every all-reduce is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
}

/// What the threads of a [`LocalGroup`] share: each rank's contribution to the current
/// all-reduce, the finished sum, and the generation (completed all-reduces) that tells a rank
/// waiting for the sum from one that arrived early for the next call.
#[derive(Debug)]
struct Exchange {
    parts: Vec<Option<(Vec<usize>, Vec<f32>)>>,
    sum: Option<Arc<Vec<f32>>>,
    /// Ranks that have not yet read the finished sum.
    readers: usize,
    generation: u64,
    /// Ranks whose handle is gone (their thread ended, by an error perhaps): an all-reduce
    /// waiting for them fails instead of waiting for ever.
    departed: Vec<bool>,
}

/// One rank of a group of threads in one process (make them with [`LocalGroup::new`]). Dropping
/// a rank's handle leaves the group: the others' all-reduces then fail instead of waiting.
#[derive(Debug)]
pub struct LocalGroup {
    rank: usize,
    world: usize,
    shared: Arc<(Mutex<Exchange>, Condvar)>,
}

impl LocalGroup {
    /// The `world` ranks of a new group, rank i at index i: give each to its own thread.
    ///
    /// # Errors
    ///
    /// [`Error::Collective`] for a world of size 0.
    pub fn new(world: usize) -> Result<Vec<LocalGroup>> {
        if world == 0 {
            return Err(Error::Collective("a group needs at least one rank".into()));
        }
        let shared = Arc::new((
            Mutex::new(Exchange {
                parts: vec![None; world],
                sum: None,
                readers: 0,
                generation: 0,
                departed: vec![false; world],
            }),
            Condvar::new(),
        ));
        Ok((0..world)
            .map(|rank| LocalGroup {
                rank,
                world,
                shared: shared.clone(),
            })
            .collect())
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::Collective("a rank of the local group panicked".into())
}

impl Drop for LocalGroup {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        if let Ok(mut ex) = lock.lock() {
            ex.departed[self.rank] = true;
            cv.notify_all();
        }
    }
}

/// The error of an all-reduce that a rank has left.
fn left(ex: &Exchange) -> Option<Error> {
    let gone: Vec<String> = ex
        .departed
        .iter()
        .enumerate()
        .filter(|(_, d)| **d)
        .map(|(r, _)| r.to_string())
        .collect();
    (!gone.is_empty()).then(|| {
        Error::Collective(format!(
            "all-reduce: rank {} left the group (its run ended)",
            gone.join(", ")
        ))
    })
}

impl Collective for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (lock, cv) = &*self.shared;
        let mut ex = lock.lock().map_err(poisoned)?;
        // A rank that finished the previous call early waits until every rank has read its sum.
        while ex.sum.is_some() {
            if let Some(e) = left(&ex) {
                return Err(e);
            }
            ex = cv.wait(ex).map_err(poisoned)?;
        }
        if let Some(e) = left(&ex) {
            return Err(e);
        }
        let generation = ex.generation;
        ex.parts[self.rank] = Some((t.dims().to_vec(), values));
        if ex.parts.iter().all(Option::is_some) {
            // The last to arrive sums in rank order: the same bits on every rank, every run.
            let parts: Vec<_> = ex.parts.iter_mut().map(|p| p.take()).collect();
            let mut sum: Option<(Vec<usize>, Vec<f32>)> = None;
            let mut mismatch = None;
            for (r, (dims, v)) in parts.into_iter().flatten().enumerate() {
                match &mut sum {
                    None => sum = Some((dims, v)),
                    Some((d0, acc)) => {
                        if *d0 != dims {
                            mismatch = Some(format!(
                                "all-reduce: rank {r} sent {dims:?}, rank 0 sent {d0:?}"
                            ));
                            break;
                        }
                        acc.iter_mut().zip(&v).for_each(|(a, b)| *a += b);
                    }
                }
            }
            ex.generation += 1;
            ex.readers = self.world;
            ex.sum = Some(Arc::new(match (mismatch, sum) {
                (None, Some((_, s))) => s,
                // Every rank reads an empty sum and reports the mismatch below.
                _ => Vec::new(),
            }));
            cv.notify_all();
        } else {
            while ex.generation == generation {
                if let Some(e) = left(&ex) {
                    ex.parts[self.rank] = None;
                    return Err(e);
                }
                ex = cv.wait(ex).map_err(poisoned)?;
            }
        }
        let sum = ex.sum.clone().expect("the sum of this generation");
        ex.readers -= 1;
        if ex.readers == 0 {
            ex.sum = None;
            cv.notify_all();
        }
        drop(ex);
        if sum.len() != t.elem_count() {
            return Err(Error::Collective(format!(
                "all-reduce: the ranks sent tensors of different shapes (this rank {:?})",
                t.dims()
            )));
        }
        Ok(Tensor::from_vec(sum.to_vec(), t.dims(), t.device())?.to_dtype(t.dtype())?)
    }
}

#[cfg(feature = "nccl")]
pub use nccl::Nccl;

#[cfg(feature = "nccl")]
mod nccl {
    use std::path::Path;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use candle_core::{CudaStorage, CustomOp1, Device, Layout, Shape, Tensor};
    use cudarc::nccl::safe::{Comm, Id, ReduceOp};

    use super::Collective;
    use crate::{Error, Result};

    /// An NCCL communicator.
    struct Communicator(Comm);

    // SAFETY: an NCCL communicator may be used from any thread as long as calls on it do not
    // overlap; `Nccl` keeps it behind a mutex, so one thread at a time calls it.
    unsafe impl Send for Communicator {}

    /// One process of a data-parallel group over NCCL, on one GPU.
    pub struct Nccl {
        comm: Mutex<Communicator>,
        rank: usize,
        world: usize,
    }

    impl std::fmt::Debug for Nccl {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Nccl {{ rank: {}, world: {} }}", self.rank, self.world)
        }
    }

    fn env_usize(name: &str) -> Result<usize> {
        let v = std::env::var(name)
            .map_err(|_| Error::Collective(format!("data-parallel training needs {name} set")))?;
        v.parse()
            .map_err(|_| Error::Collective(format!("{name}={v} is not a whole number")))
    }

    impl Nccl {
        /// Joins the group this process belongs to: `RANK` and `WORLD_SIZE` from the
        /// environment, on `device` (a CUDA device: give each process its own, usually
        /// `cuda:$LOCAL_RANK`). Rank 0 makes the group's unique id and writes it to `id_file`
        /// (atomically); the other ranks wait up to two minutes for the file. Use a fresh path
        /// for every launch (a file left by an earlier launch would join the wrong group).
        ///
        /// # Errors
        ///
        /// [`Error::Collective`] for a missing or malformed variable, a rank outside the world, a CPU
        /// device, an id file that does not appear or is malformed, or NCCL's own failure.
        pub fn join(device: &Device, id_file: &Path) -> Result<Self> {
            let rank = env_usize("RANK")?;
            let world = env_usize("WORLD_SIZE")?;
            if world == 0 || rank >= world {
                return Err(Error::Collective(format!(
                    "RANK={rank} is outside WORLD_SIZE={world}"
                )));
            }
            let Device::Cuda(cuda) = device else {
                return Err(Error::Collective(
                    "NCCL data-parallel training needs a CUDA device".into(),
                ));
            };
            let id = if rank == 0 {
                let id = Id::new().map_err(|e| Error::Collective(format!("NCCL: {e:?}")))?;
                let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
                let tmp = id_file.with_extension("tmp");
                std::fs::write(&tmp, &bytes)
                    .and_then(|()| std::fs::rename(&tmp, id_file))
                    .map_err(|e| {
                        Error::Collective(format!("writing {}: {e}", id_file.display()))
                    })?;
                id
            } else {
                let started = Instant::now();
                let bytes = loop {
                    match std::fs::read(id_file) {
                        Ok(b) if b.len() == 128 => break b,
                        Ok(b) => {
                            return Err(Error::Collective(format!(
                                "{}: {} bytes, an NCCL id has 128",
                                id_file.display(),
                                b.len()
                            )));
                        }
                        Err(_) if started.elapsed() < Duration::from_secs(120) => {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(e) => {
                            return Err(Error::Collective(format!(
                                "rank {rank}: no NCCL id from rank 0 at {} after two minutes \
                                 ({e})",
                                id_file.display()
                            )));
                        }
                    }
                };
                let mut internal = [0 as std::ffi::c_char; 128];
                for (d, &b) in internal.iter_mut().zip(&bytes) {
                    *d = b as std::ffi::c_char;
                }
                Id::uninit(internal)
            };
            let comm = Comm::from_rank(cuda.cuda_stream(), rank, world, id)
                .map_err(|e| Error::Collective(format!("NCCL: joining as rank {rank}: {e:?}")))?;
            Ok(Self {
                comm: Mutex::new(Communicator(comm)),
                rank,
                world,
            })
        }
    }

    /// The all-reduce as a candle op on CUDA storage (`f32`).
    struct AllReduce<'a>(&'a Mutex<Communicator>);

    impl CustomOp1 for AllReduce<'_> {
        fn name(&self) -> &'static str {
            "nccl-all-reduce-sum"
        }

        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
            candle_core::bail!("the NCCL all-reduce takes tensors on a CUDA device")
        }

        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let Some((start, end)) = l.contiguous_offsets() else {
                candle_core::bail!("the NCCL all-reduce takes contiguous tensors")
            };
            let src = s.as_cuda_slice::<f32>()?.slice(start..end);
            let mut dst = s.device.alloc_zeros::<f32>(end - start)?;
            let comm = self
                .0
                .lock()
                .map_err(|_| candle_core::Error::Msg("the NCCL communicator is poisoned".into()))?;
            comm.0
                .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
            Ok((
                CudaStorage::wrap_cuda_slice(dst, s.device.clone()),
                l.shape().clone(),
            ))
        }
    }

    impl Collective for Nccl {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world_size(&self) -> usize {
            self.world
        }
        fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
            let dtype = t.dtype();
            let t = t.to_dtype(candle_core::DType::F32)?.contiguous()?;
            Ok(t.apply_op1_no_bwd(&AllReduce(&self.comm))?
                .to_dtype(dtype)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_local_group_sums_in_rank_order_over_many_calls() -> Result<()> {
        let group = LocalGroup::new(3)?;
        let handles: Vec<_> = group
            .into_iter()
            .map(|g| {
                std::thread::spawn(move || -> Result<Vec<Vec<f32>>> {
                    let mut out = Vec::new();
                    for call in 0..50 {
                        let v = (g.rank() + 1) as f32 * (call + 1) as f32;
                        let t = Tensor::new(&[v, -v, 0.5], &Device::Cpu)?;
                        out.push(g.all_reduce_sum(&t)?.to_vec1::<f32>()?);
                    }
                    Ok(out)
                })
            })
            .collect();
        for h in handles {
            let out = h.join().expect("rank thread")?;
            for (call, v) in out.iter().enumerate() {
                let c = (call + 1) as f32;
                assert_eq!(v, &vec![6.0 * c, -6.0 * c, 1.5]);
            }
        }
        Ok(())
    }

    #[test]
    fn mismatched_shapes_fail_on_every_rank_and_one_rank_is_the_identity() -> Result<()> {
        let group = LocalGroup::new(2)?;
        let handles: Vec<_> = group
            .into_iter()
            .map(|g| {
                std::thread::spawn(move || {
                    let n = 2 + g.rank();
                    g.all_reduce_sum(&Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap())
                        .is_err()
                })
            })
            .collect();
        for h in handles {
            assert!(h.join().expect("rank thread"));
        }
        // A rank that leaves (its thread ends) makes the others' all-reduce fail, not hang.
        let mut pair = LocalGroup::new(2)?;
        let stays = pair.remove(0);
        drop(pair);
        let err = stays
            .all_reduce_sum(&Tensor::zeros(2, DType::F32, &Device::Cpu)?)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rank 1 left"), "{err}");
        let t = Tensor::new(&[1f32, 2.0], &Device::Cpu)?;
        let one = LocalGroup::new(1)?.remove(0);
        assert_eq!(one.all_reduce_sum(&t)?.to_vec1::<f32>()?, vec![1.0, 2.0]);
        assert_eq!(Single.all_reduce_sum(&t)?.to_vec1::<f32>()?, vec![1.0, 2.0]);
        assert!(LocalGroup::new(0).is_err());
        Ok(())
    }
}

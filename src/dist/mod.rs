//! Data parallelism: N processes (ranks) each hold the whole model, take a disjoint slice of every global
//! batch, and sum their gradients before the optimizer step, so that N ranks compute the single-process
//! update (docs/METHOD.md section 6: the update is defined by the global batch, not by who computes it).
//!
//! The layer wraps existing engines and stays beside the training code: the tape, layers and optimizer
//! know nothing of ranks. A [`Collective`] is the few operations the trainer needs: sums over f32
//! gradient buckets and f64 statistics, a broadcast and a barrier. [`Single`] is the one-process world;
//! `Mpi` (feature `mpi`) runs over MPI between CPU processes and nodes; `Nccl` (feature `nccl`) sums
//! gradient buckets and gathers ZeRO-1's shards between GPUs, on a communication stream of its own, and
//! uses the process world (MPI's with several ranks) for everything else.
//!
//! Files: `bucket.rs` (gradients flattened into fixed-size buckets, one collective call per bucket),
//! `overlap.rs` (bucket sums started while backward runs), `zero.rs` (ZeRO-1: each rank keeps the optimizer state of one shard of that flat layout), `mpi.rs`,
//! `nccl.rs`.
pub mod bucket;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
pub mod overlap;
pub mod zero;

pub use bucket::{all_reduce_gradients, Buckets, DEFAULT_BUCKET_BYTES};
#[cfg(feature = "mpi")]
pub use mpi::Mpi;
#[cfg(feature = "nccl")]
pub use nccl::Nccl;
pub use overlap::{BucketSums, ReadyBuckets, Summed};
pub use zero::Zero;

use cola_tensor::Tensor;
use std::sync::Arc;

/// A failed collective operation or a world that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("MPI: {0}")]
    Mpi(String),
    #[error("NCCL: {0}")]
    Nccl(String),
    #[error("gradient buckets: {0}")]
    Buckets(String),
    #[error("ZeRO: {0}")]
    Zero(String),
    /// The work between bucket sums (backward) failed; its caller holds the error.
    #[error("the backward pass between gradient bucket sums failed")]
    Interrupted,
    #[error(transparent)]
    Tensor(#[from] cola_tensor::TensorError),
    #[error(transparent)]
    Optim(#[from] cola_optim::OptimError),
}

pub type Result<T> = std::result::Result<T, DistError>;

/// The operations data-parallel training needs from its ranks. Every rank calls the same operations in
/// the same order with buffers of the same length; the results are identical on every rank.
pub trait Collective: std::fmt::Debug + Send + Sync {
    /// This process's index, `0..world_size()`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn world_size(&self) -> usize;

    /// Replaces `buffer` on every rank by the element-wise sum of every rank's `buffer` (a gradient
    /// bucket).
    fn all_reduce_sum(&self, buffer: &mut [f32]) -> Result<()>;

    /// Sums buckets of `sizes` elements over the ranks: `body` starts each one through the
    /// [`BucketSums`] it is given, when it likes (backward goes on between starts); every bucket it
    /// started is complete when this returns the sums, in bucket order. With `owners`, bucket b's sum
    /// is needed on rank `owners[b]` only (ZeRO-1's reduce-scatter, bucket by bucket) and the others'
    /// copies of it are unspecified. Every rank starts the same buckets in the same order. The default
    /// sums each bucket with [`Collective::all_reduce_sum`] as it starts (on every rank, owners
    /// included); MPI starts non-blocking all-reduces (or reduces to the owner) that progress while
    /// `body` runs. The path without overlap starts every bucket after backward through the same call,
    /// so the two sum alike.
    fn sum_buckets(
        &self,
        sizes: &[usize],
        _owners: Option<&[usize]>,
        body: &mut dyn FnMut(&mut dyn BucketSums) -> Result<()>,
    ) -> Result<Vec<Vec<f32>>> {
        let sum = |buffer: &mut [f32]| self.all_reduce_sum(buffer);
        let mut sums =
            overlap::Blocking { sum: &sum, buffers: sizes.iter().map(|&n| vec![0.0; n]).collect() };
        body(&mut sums)?;
        Ok(sums.buffers)
    }

    /// [`Collective::all_reduce_sum`] over f64 values: loss sums and target counts, which must not round.
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()>;

    /// Whether [`Collective::all_reduce_sum_on_device`] sums GPU tensors where they lie (NCCL). When not,
    /// GPU gradients are staged through host memory for [`Collective::all_reduce_sum`].
    fn sums_on_device(&self) -> bool {
        false
    }

    /// [`Collective::all_reduce_sum`] of a contiguous f32 tensor on this rank's GPU, in place.
    fn all_reduce_sum_on_device(&self, _buffer: &mut Tensor) -> Result<()> {
        Err(DistError::Nccl("this collective sums host buffers only".into()))
    }

    /// [`Collective::sum_buckets`] where the gradients lie (a collective that
    /// [`Collective::sums_on_device`]): `body` starts each bucket with
    /// [`BucketSums::start_on_device`], handing over a 1-D f32 tensor, and the summed tensors come back in
    /// bucket order; with `owners`, only the owner's copy of a bucket is its sum. The default sums each
    /// bucket with [`Collective::all_reduce_sum_on_device`] as it starts; NCCL queues each sum on a
    /// communication stream of its own, ordered after the copies that filled the bucket, and has the
    /// device's stream wait for every sum before this returns.
    fn sum_buckets_on_device(
        &self,
        sizes: &[usize],
        _owners: Option<&[usize]>,
        body: &mut dyn FnMut(&mut dyn BucketSums) -> Result<()>,
    ) -> Result<Vec<Tensor>> {
        let sum = |buffer: &mut Tensor| self.all_reduce_sum_on_device(buffer);
        let mut sums = overlap::DeviceBlocking { sum: &sum, buffers: vec![None; sizes.len()] };
        body(&mut sums)?;
        overlap::started_buckets(sums.buffers)
    }

    /// [`Collective::all_gather`] of a 1-D f32 tensor on this rank's device (the same length on every
    /// rank): every rank's `shard` end to end, in rank order, on the same device. The default is one
    /// rank's: the shard itself.
    fn all_gather_on_device(&self, shard: Tensor) -> Result<Tensor> {
        if self.world_size() != 1 {
            return Err(DistError::Nccl("this collective gathers host buffers only".into()));
        }
        Ok(shard)
    }

    /// Sums `send` (the same length on every rank, `world_size()` equal shards end to end) over the
    /// ranks and leaves shard `rank()` of the sum in `shard`: rank r receives the sum of every rank's
    /// elements `r * shard.len() .. (r + 1) * shard.len()` (MPI's reduce-scatter-block). ZeRO's gradient
    /// sum: each rank receives only the part of the gradient whose optimizer state it holds. A
    /// collective without it says so.
    fn reduce_scatter_sum(&self, _send: &[f32], _shard: &mut [f32]) -> Result<()> {
        Err(DistError::Mpi("this collective has no reduce-scatter".into()))
    }

    /// Concatenates every rank's `shard` (the same length on every rank) in rank order into `all`
    /// (`world_size()` times as long): ZeRO's return of each rank's updated parameters to every rank.
    fn all_gather(&self, _shard: &[f32], _all: &mut [f32]) -> Result<()> {
        Err(DistError::Mpi("this collective has no all-gather".into()))
    }

    /// Replaces `buffer` on every rank by `root`'s.
    fn broadcast(&self, buffer: &mut [u8], root: usize) -> Result<()>;

    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// Stops every rank with exit status `code`: a rank that fails cannot leave the others waiting in a
    /// collective call that will never complete.
    fn abort(&self, code: i32) -> !;

    /// Whether the trainer sums gradients, losses and counts over this collective. With one rank the sums
    /// are identities and are skipped; a collective under test at one rank (NCCL's world-size-1 check)
    /// says true so that its path runs.
    fn sums(&self) -> bool {
        self.world_size() > 1
    }

    /// Rank 0 alone prints, logs, evaluates and writes the run directory.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
}

/// The one-process world: every operation is the identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, _buffer: &mut [f32]) -> Result<()> {
        Ok(())
    }

    fn all_reduce_sum_f64(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }

    /// One shard: the sum over one rank is `send` itself.
    fn reduce_scatter_sum(&self, send: &[f32], shard: &mut [f32]) -> Result<()> {
        check_shards(send.len(), shard.len(), 1)?;
        shard.copy_from_slice(send);
        Ok(())
    }

    fn all_gather(&self, shard: &[f32], all: &mut [f32]) -> Result<()> {
        check_shards(all.len(), shard.len(), 1)?;
        all.copy_from_slice(shard);
        Ok(())
    }

    fn broadcast(&self, _buffer: &mut [u8], _root: usize) -> Result<()> {
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// Refuses a whole buffer of `whole` elements that is not `ranks` shards of `shard` elements.
pub(crate) fn check_shards(whole: usize, shard: usize, ranks: usize) -> Result<()> {
    if shard.checked_mul(ranks) != Some(whole) {
        return Err(DistError::Buckets(format!(
            "a buffer of {whole} elements is not {ranks} shard(s) of {shard} elements"
        )));
    }
    Ok(())
}

/// The world this process belongs to: MPI's when built with `mpi` and started by a launcher (`mpirun`,
/// `srun`), else [`Single`]. A process started without a launcher stays single even in an `mpi` build,
/// so that the plain command line never needs an MPI runtime.
///
/// A build without `mpi` started as one of several ranks is an error: each rank would train alone on
/// the whole batch and write the same run directory.
pub fn detect() -> Result<Arc<dyn Collective>> {
    #[cfg(feature = "mpi")]
    if launched_by_mpi() {
        return Ok(Arc::new(Mpi::initialize()?));
    }
    #[cfg(not(feature = "mpi"))]
    if let Some(ranks) = launcher_world_size().filter(|&ranks| ranks > 1) {
        return Err(DistError::Mpi(format!(
            "this process is one of {ranks} ranks started by an MPI launcher, but it was built without MPI: \
             every rank would train alone and write the same run directory. Build with --features mpi \
             (scripts/install_mpi.sh installs Open MPI), or run one process"
        )));
    }
    Ok(Arc::new(Single))
}

/// The number of ranks a launcher announced in the environment (Open MPI's `OMPI_COMM_WORLD_SIZE`,
/// PMI's `PMI_SIZE`), if any.
pub fn launcher_world_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].iter().find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
}

/// The collective a run on `device` sums its gradients with: NCCL between GPUs when built with `nccl`
/// and there are several ranks or `nccl` asks for it (the one-GPU check of the NCCL path), else `world`
/// itself (MPI sums GPU gradients through host buffers). Asking for NCCL off a GPU, or in a build
/// without it, is an error.
pub fn for_device(
    world: Arc<dyn Collective>,
    device: cola_tensor::Device,
    nccl: bool,
) -> Result<Arc<dyn Collective>> {
    #[cfg(feature = "nccl")]
    if let (cola_tensor::Device::Cuda(ordinal), true) = (device, nccl || world.world_size() > 1) {
        return Ok(Arc::new(Nccl::over(world, ordinal)?));
    }
    if nccl {
        return Err(DistError::Nccl(if cfg!(feature = "nccl") {
            format!("--nccl sums gradients between GPUs, but this run is on {device}")
        } else {
            "--nccl needs a build with --features nccl".into()
        }));
    }
    Ok(world)
}

/// Environment variables a launcher sets in every rank: Open MPI's `mpirun`, PMIx (Open MPI 4+ and
/// Slurm's `srun --mpi=pmix`), PMI-1/2 (MPICH, Intel MPI, `srun --mpi=pmi2`).
pub const LAUNCHER_VARIABLES: [&str; 4] = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"];

/// True when a launcher started this process.
pub fn launched_by_mpi() -> bool {
    LAUNCHER_VARIABLES.iter().any(|name| std::env::var_os(name).is_some())
}

/// This rank's index among the ranks of its node, from the launcher's environment (`LOCAL_RANK`,
/// Open MPI's `OMPI_COMM_WORLD_LOCAL_RANK`, MPICH's `MPI_LOCALRANKID`, Slurm's `SLURM_LOCALID`); 0 when
/// none is set. Under N ranks a GPU run uses it as its CUDA device ordinal.
pub fn local_rank() -> usize {
    ["LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
        .unwrap_or(0)
}

/// The rows of a global batch of `rows` sequences that `rank` of `world_size` trains on:
/// `rank * rows / world_size .. (rank + 1) * rows / world_size`, disjoint and covering every row.
pub fn shard_rows(rows: usize, rank: usize, world_size: usize) -> std::ops::Range<usize> {
    let world_size = world_size.max(1);
    rank * rows / world_size..(rank + 1) * rows / world_size
}

#[cfg(test)]
mod tests {
    //! The world's arithmetic and, in a build without MPI, the refusal to run as one of several ranks.
    use super::*;

    /// One rank's reduce-scatter and all-gather are copies, and a buffer that is not whole shards is
    /// refused rather than read past its end.
    #[test]
    fn a_single_rank_scatters_and_gathers_itself() {
        let (send, mut shard, mut all) = ([1.0f32, -2.5, 3.0], [0.0f32; 3], [0.0f32; 3]);
        Single.reduce_scatter_sum(&send, &mut shard).unwrap();
        Single.all_gather(&shard, &mut all).unwrap();
        assert_eq!((shard, all), (send, send));
        assert!(Single.reduce_scatter_sum(&send, &mut [0.0; 2]).is_err());
        assert!(Single.all_gather(&[0.0; 4], &mut all).is_err());
    }

    #[test]
    fn shards_are_disjoint_and_cover_the_batch() {
        for (rows, world_size) in [(8, 2), (8, 4), (6, 3), (2, 2), (5, 1)] {
            let shards: Vec<_> = (0..world_size).map(|rank| shard_rows(rows, rank, world_size)).collect();
            assert_eq!(shards[0].start, 0);
            assert_eq!(shards[world_size - 1].end, rows);
            for pair in shards.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "{rows} rows over {world_size} ranks");
            }
            assert!(shards.iter().all(|s| s.len() == rows / world_size));
        }
    }

    /// Sets a launcher variable of this test process; no other test of this binary reads it.
    #[cfg(not(feature = "mpi"))]
    #[test]
    fn a_build_without_mpi_refuses_to_be_one_of_several_ranks() {
        std::env::set_var("OMPI_COMM_WORLD_SIZE", "2");
        let refused = detect().map(|world| world.world_size());
        std::env::set_var("OMPI_COMM_WORLD_SIZE", "1");
        let alone = detect().map(|world| world.world_size());
        std::env::remove_var("OMPI_COMM_WORLD_SIZE");
        let message = refused.expect_err("one of 2 ranks without MPI").to_string();
        assert!(message.contains("one of 2 ranks") && message.contains("--features mpi"), "{message}");
        assert_eq!(alone.unwrap(), 1);
    }
}

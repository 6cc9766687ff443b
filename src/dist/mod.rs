//! Data parallelism: N processes (ranks) each hold the whole model, take a disjoint slice of every global
//! batch, and sum their gradients before the optimizer step, so that N ranks compute the single-process
//! update (docs/METHOD.md section 6: the update is defined by the global batch, not by who computes it).
//!
//! The layer wraps existing engines and stays beside the training code: the tape, layers and optimizer
//! know nothing of ranks. A [`Collective`] is the few operations the trainer needs: sums over f32
//! gradient buckets and f64 statistics, a broadcast and a barrier. [`Single`] is the one-process world;
//! `Mpi` (feature `mpi`) runs over MPI between CPU processes and nodes; `Nccl` (feature `nccl`) sums
//! gradient buckets between GPUs and uses MPI for everything else.
//!
//! Files: `bucket.rs` (gradients flattened into fixed-size buckets, one collective call per bucket),
//! `mpi.rs`, `nccl.rs`.
pub mod bucket;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;

pub use bucket::{all_reduce_gradients, Buckets, DEFAULT_BUCKET_BYTES};
#[cfg(feature = "mpi")]
pub use mpi::Mpi;
#[cfg(feature = "nccl")]
pub use nccl::Nccl;

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
    #[error(transparent)]
    Tensor(#[from] cola_tensor::TensorError),
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

    /// [`Collective::all_reduce_sum`] over f64 values: loss sums and target counts, which must not round.
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()>;

    /// Replaces `buffer` on every rank by `root`'s.
    fn broadcast(&self, buffer: &mut [u8], root: usize) -> Result<()>;

    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;

    /// Stops every rank with exit status `code`: a rank that fails cannot leave the others waiting in a
    /// collective call that will never complete.
    fn abort(&self, code: i32) -> !;

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

/// The world this process belongs to: MPI's when built with `mpi` and started by a launcher (`mpirun`,
/// `srun`), else [`Single`]. A process started without a launcher stays single even in an `mpi` build,
/// so that the plain command line never needs an MPI runtime.
pub fn detect() -> Result<Arc<dyn Collective>> {
    #[cfg(feature = "mpi")]
    if launched_by_mpi() {
        return Ok(Arc::new(Mpi::initialize()?));
    }
    Ok(Arc::new(Single))
}

/// The collective a run on `device` sums its gradients with: NCCL between GPUs when built with `nccl`
/// and there are several ranks, else `world` itself (MPI sums GPU gradients through host buffers).
pub fn for_device(world: Arc<dyn Collective>, device: cola_tensor::Device) -> Result<Arc<dyn Collective>> {
    #[cfg(feature = "nccl")]
    if let (cola_tensor::Device::Cuda(ordinal), true) = (device, world.world_size() > 1) {
        return Ok(Arc::new(Nccl::over(world, ordinal)?));
    }
    let _ = device;
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

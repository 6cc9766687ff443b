//! The MPI world (the `mpi` crate over the system's Open MPI): CPU processes on one node or many, started
//! by `mpirun` or `srun`. MPI's default error handler on the world communicator aborts every rank on a
//! failed call, so the operations below cannot return an MPI error; a rank that dies is noticed by the
//! launcher, which stops the others.
use super::{check_shards, BucketSums, Collective, DistError, Result};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::request::{LocalScope, Request};
use mpi::topology::{Communicator, SimpleCommunicator};

/// This process's membership of the MPI world. Holding it keeps MPI initialised; dropping the last
/// handle finalises it.
pub struct Mpi {
    rank: usize,
    world_size: usize,
    /// Finalises MPI when dropped.
    _universe: Universe,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi {{ rank: {}, world_size: {} }}", self.rank, self.world_size)
    }
}

impl Mpi {
    /// Initialises MPI (once per process) and joins the world. Only the thread that called this makes
    /// MPI calls; the compute pool's threads never do.
    pub fn initialize() -> Result<Mpi> {
        let universe = mpi::initialize()
            .ok_or_else(|| DistError::Mpi("MPI was already initialised in this process".into()))?;
        let world = universe.world();
        let (rank, world_size) = (world.rank(), world.size());
        Ok(Mpi { rank: rank as usize, world_size: world_size as usize, _universe: universe })
    }

    /// The world communicator: a constant handle, fetched per call so that `Mpi` holds no raw MPI handle
    /// and can be shared between threads.
    fn world(&self) -> SimpleCommunicator {
        SimpleCommunicator::world()
    }
}

/// MPI counts are C ints: a longer buffer is refused rather than silently truncated.
fn check_count(len: usize) -> Result<()> {
    if len > i32::MAX as usize {
        return Err(DistError::Mpi(format!(
            "a buffer of {len} elements is longer than MPI's count type holds"
        )));
    }
    Ok(())
}

/// Non-blocking sums of gradient buckets (`MPI_Iallreduce`, or `MPI_Ireduce` to the bucket's owner
/// under ZeRO-1) inside one request scope: each
/// bucket's send and receive buffers are allocated before the scope opens, so they outlive every request.
struct Immediate<'a, 's> {
    world: SimpleCommunicator,
    rank: usize,
    /// The rank each bucket's sum goes to (`MPI_Ireduce`), when not to every rank.
    owners: Option<&'a [usize]>,
    scope: &'s LocalScope<'a>,
    /// Per bucket: its send and receive buffers until it starts.
    buffers: Vec<Option<(&'a mut [f32], &'a mut [f32])>>,
    pending: Vec<Request<'a, [f32], &'s LocalScope<'a>>>,
}

impl BucketSums for Immediate<'_, '_> {
    fn start(&mut self, bucket: usize, fill: &mut dyn FnMut(&mut [f32])) -> Result<()> {
        let (send, receive) = self.buffers.get_mut(bucket).and_then(Option::take).ok_or_else(|| {
            DistError::Buckets(format!("bucket {bucket} does not exist or has started already"))
        })?;
        fill(send);
        let send: &[f32] = send;
        let sum = SystemOperation::sum();
        let request = match self.owners.map(|owners| owners[bucket]) {
            None => self.world.immediate_all_reduce_into(self.scope, send, receive, sum),
            Some(owner) if owner == self.rank => self
                .world
                .process_at_rank(owner as i32)
                .immediate_reduce_into_root(self.scope, send, receive, sum),
            Some(owner) => {
                self.world.process_at_rank(owner as i32).immediate_reduce_into(self.scope, send, sum)
            }
        };
        self.pending.push(request);
        self.progress()
    }

    /// Tests every pending request (`MPI_Test`): Open MPI advances non-blocking collectives only inside
    /// MPI calls, so a sum makes progress during backward only if something calls in.
    fn progress(&mut self) -> Result<()> {
        self.pending = std::mem::take(&mut self.pending).into_iter().filter_map(|r| r.test().err()).collect();
        Ok(())
    }
}

impl Immediate<'_, '_> {
    fn wait_all(&mut self) {
        for request in self.pending.drain(..) {
            request.wait_without_status();
        }
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, buffer: &mut [f32]) -> Result<()> {
        check_count(buffer.len())?;
        let send = buffer.to_vec();
        self.world().all_reduce_into(&send[..], buffer, SystemOperation::sum());
        Ok(())
    }

    /// Non-blocking all-reduces that progress while `body` runs. When `body` fails, the sums it started
    /// are still waited for (the other ranks take part in them) before its error is returned.
    fn sum_buckets(
        &self,
        sizes: &[usize],
        owners: Option<&[usize]>,
        body: &mut dyn FnMut(&mut dyn BucketSums) -> Result<()>,
    ) -> Result<Vec<Vec<f32>>> {
        for &n in sizes {
            check_count(n)?;
        }
        if let Some(owner) = owners.into_iter().flatten().find(|&&owner| owner >= self.world_size) {
            return Err(DistError::Mpi(format!("a bucket owned by rank {owner} of {}", self.world_size)));
        }
        let mut send: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
        let mut receive: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
        mpi::request::scope(|scope| {
            let buffers = send
                .iter_mut()
                .zip(receive.iter_mut())
                .map(|(s, r)| Some((&mut s[..], &mut r[..])))
                .collect();
            let world = self.world();
            let mut sums = Immediate { world, rank: self.rank, owners, scope, buffers, pending: Vec::new() };
            let outcome = body(&mut sums);
            sums.wait_all();
            outcome
        })?;
        Ok(receive)
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        check_count(values.len())?;
        let send = values.to_vec();
        self.world().all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn reduce_scatter_sum(&self, send: &[f32], shard: &mut [f32]) -> Result<()> {
        check_count(send.len())?;
        check_shards(send.len(), shard.len(), self.world_size)?;
        self.world().reduce_scatter_block_into(send, shard, SystemOperation::sum());
        Ok(())
    }

    fn all_gather(&self, shard: &[f32], all: &mut [f32]) -> Result<()> {
        check_count(all.len())?;
        check_shards(all.len(), shard.len(), self.world_size)?;
        self.world().all_gather_into(shard, all);
        Ok(())
    }

    fn broadcast(&self, buffer: &mut [u8], root: usize) -> Result<()> {
        check_count(buffer.len())?;
        if root >= self.world_size {
            return Err(DistError::Mpi(format!("broadcast from rank {root} of {}", self.world_size)));
        }
        self.world().process_at_rank(root as i32).broadcast_into(buffer);
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.world().barrier();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.world().abort(code)
    }
}

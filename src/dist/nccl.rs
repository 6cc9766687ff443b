//! Gradient buckets summed between GPUs by NCCL (cudarc's `nccl` feature; `libnccl.so.2` is opened at
//! run time, so building needs no NCCL). The communicator is bootstrapped as llm.c does: rank 0 draws
//! NCCL's unique id and the process world broadcasts it, then every rank joins with its rank and world
//! size. The world is MPI's in a build with `mpi` started by a launcher, else one process: NCCL itself
//! needs no MPI, so a one-GPU build links none. Everything other than the f32 sums and gathers
//! (statistics, broadcasts, barriers, abort) goes over the bootstrap world.
//!
//! GPU gradients are summed where they lie: `overlap.rs` assembles each bucket as a contiguous f32 GPU
//! tensor by copies on the stream every kernel of the device runs on (the compute stream), and this
//! collective hands its storage to NCCL on a communication stream of its own. Each NCCL call waits for an
//! event recorded on the compute stream when its bucket was filled, so it reads the finished copies while
//! backward goes on queueing kernels on the compute stream; once every bucket has started, the compute
//! stream waits for an event recorded on the communication stream, so the update reads the sums only when
//! they are complete. The host never waits. Buckets are kept alive until that wait is queued: the
//! engine's allocator hands freed memory to later work of the compute stream, which must come after the
//! sums. Under ZeRO-1 each bucket is summed by `ncclReduce` to the rank that owns it (`zero.rs` says why
//! per bucket) and the updated shards are gathered by `ncclAllGather`, ordered the same way. A host buffer
//! (`all_reduce_sum`, `all_gather`: checkpoints) is staged through the GPU on the communication stream:
//! copied from the host, summed or gathered, copied back, and waited for.
//!
//! The overlapped sums and the ZeRO-1 reduce and gather are compiled but have not yet run on a GPU;
//! `scripts/gpu_check.sh` runs them at world size 1, where the losses must match the plain run's.
//!
//! cudarc's communicator holds a raw NCCL handle, which may not move between threads, so it lives in a
//! thread-local of the thread that created it; like MPI here, only that thread makes collective calls.
use super::overlap::started_buckets;
use super::{check_shards, BucketSums, Collective, DistError, Result};
use cola_tensor::{DType, Device, Tensor};
use cudarc::driver::{sys::CUdeviceptr, CudaStream, DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop};
use cudarc::nccl::safe::{Comm, Id, ReduceOp};
use std::cell::RefCell;
use std::sync::Arc;

thread_local! {
    static COMM: RefCell<Option<Comm>> = const { RefCell::new(None) };
}

/// NCCL between one GPU per rank, over a bootstrap world of the same ranks.
#[derive(Debug)]
pub struct Nccl {
    world: Arc<dyn Collective>,
    ordinal: usize,
    /// The stream every kernel of the device runs on; the communicator has a stream of its own.
    compute: Arc<CudaStream>,
}

fn nccl_error(what: &str) -> impl FnOnce(cudarc::nccl::result::NcclError) -> DistError + '_ {
    move |e| DistError::Nccl(format!("{what}: {e:?}"))
}

fn driver_error(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> DistError + '_ {
    move |e| DistError::Nccl(format!("{what}: {e}"))
}

/// `len` f32 elements at a device address, on the communicator's stream: a tensor's storage (memory of the
/// engine's allocator, not a cudarc slice) in the form cudarc's NCCL calls take. The work around it is
/// ordered by the events of [`Nccl::on_comm_stream`] and [`StreamSums`], so handing out the address
/// records nothing.
struct DeviceSpan {
    address: CUdeviceptr,
    len: usize,
    stream: Arc<CudaStream>,
}

impl DeviceSlice<f32> for DeviceSpan {
    fn len(&self) -> usize {
        self.len
    }

    fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
}

impl DevicePtr<f32> for DeviceSpan {
    fn device_ptr<'a>(&'a self, _stream: &'a CudaStream) -> (CUdeviceptr, SyncOnDrop<'a>) {
        (self.address, SyncOnDrop::Sync(None))
    }
}

impl DevicePtrMut<f32> for DeviceSpan {
    fn device_ptr_mut<'a>(&'a mut self, _stream: &'a CudaStream) -> (CUdeviceptr, SyncOnDrop<'a>) {
        (self.address, SyncOnDrop::Sync(None))
    }
}

impl Nccl {
    /// Runs `f` with this thread's communicator.
    fn with_comm<T>(&self, f: impl FnOnce(&Comm) -> Result<T>) -> Result<T> {
        COMM.with(|slot| {
            let slot = slot.borrow();
            let comm = slot.as_ref().ok_or_else(|| {
                DistError::Nccl(format!(
                    "the communicator of cuda:{} belongs to the thread that created it",
                    self.ordinal
                ))
            })?;
            f(comm)
        })
    }

    /// Runs `f` with this thread's communicator, its work queued on the communication stream after
    /// everything queued so far on the compute stream, and the compute stream made to wait for it.
    fn on_comm_stream<T>(&self, f: impl FnOnce(&Comm) -> Result<T>) -> Result<T> {
        self.with_comm(|comm| {
            let stream = comm.stream();
            stream.join(&self.compute).map_err(driver_error("order the communication stream"))?;
            let out = f(comm)?;
            self.compute.join(&stream).map_err(driver_error("wait for the communication stream"))?;
            Ok(out)
        })
    }

    /// Refuses a tensor that is not 1-D f32 of `len` elements on this rank's GPU.
    fn check_buffer(&self, what: &str, buffer: &Tensor, len: usize) -> Result<()> {
        let device = Device::Cuda(self.ordinal);
        if buffer.dtype() != DType::F32 || buffer.device() != device || buffer.shape() != [len] {
            return Err(DistError::Nccl(format!(
                "{what} is {len} f32 elements on {device}, not {:?} {} on {}",
                buffer.shape(),
                buffer.dtype(),
                buffer.device()
            )));
        }
        Ok(())
    }

    /// Joins the NCCL communicator of `world`'s ranks on CUDA device `ordinal` (every rank calls it), with
    /// a communication stream of its own beside the device's compute stream.
    pub fn over(world: Arc<dyn Collective>, ordinal: usize) -> Result<Nccl> {
        let device = cola_kernels::cuda::device(ordinal)
            .map_err(|e| DistError::Nccl(format!("cuda:{ordinal}: {e}")))?;
        let compute = device.stream().clone();
        let comm_stream = compute.fork().map_err(driver_error("create the communication stream"))?;
        let mut id = [0u8; 128];
        if world.is_root() {
            let drawn = Id::new().map_err(nccl_error("ncclGetUniqueId (is libnccl.so.2 installed?)"))?;
            for (byte, &c) in id.iter_mut().zip(drawn.internal()) {
                *byte = c as u8;
            }
        }
        world.broadcast(&mut id, 0)?;
        let comm =
            Comm::from_rank(comm_stream, world.rank(), world.world_size(), Id::uninit(id.map(|b| b as _)))
                .map_err(nccl_error("ncclCommInitRank"))?;
        COMM.with(|slot| *slot.borrow_mut() = Some(comm));
        Ok(Nccl { world, ordinal, compute })
    }
}

/// The bucket sums of one update on the communication stream ([`Collective::sum_buckets_on_device`]):
/// each starts after an event of the compute stream (the copies that filled it), and its tensor is kept
/// until the compute stream has been made to wait for every sum.
struct StreamSums<'c> {
    nccl: &'c Nccl,
    comm: &'c Comm,
    sizes: &'c [usize],
    /// The rank each bucket's sum goes to (`ncclReduce`), when not to every rank (`ncclAllReduce`).
    owners: Option<&'c [usize]>,
    buffers: Vec<Option<Tensor>>,
}

impl BucketSums for StreamSums<'_> {
    fn start(&mut self, bucket: usize, _fill: &mut dyn FnMut(&mut [f32])) -> Result<()> {
        Err(DistError::Nccl(format!("bucket {bucket}: NCCL sums device tensors, not host buffers")))
    }

    fn on_device(&self) -> bool {
        true
    }

    fn start_on_device(&mut self, bucket: usize, mut buffer: Tensor) -> Result<()> {
        let (Some(slot), Some(&len)) = (self.buffers.get_mut(bucket), self.sizes.get(bucket)) else {
            return Err(DistError::Buckets(format!("there is no bucket {bucket}")));
        };
        if slot.is_some() {
            return Err(DistError::Buckets(format!("bucket {bucket} has started already")));
        }
        self.nccl.check_buffer(&format!("bucket {bucket}"), &buffer, len)?;
        let address = buffer.cuda_elements_mut()?;
        let stream = self.comm.stream();
        stream.join(&self.nccl.compute).map_err(driver_error("order the communication stream"))?;
        let mut span = DeviceSpan { address, len, stream };
        match self.owners.map(|owners| owners[bucket]) {
            None => {
                self.comm.all_reduce_in_place(&mut span, &ReduceOp::Sum).map_err(nccl_error("ncclAllReduce"))
            }
            Some(owner) => self
                .comm
                .reduce_in_place(&mut span, &ReduceOp::Sum, owner as i32)
                .map_err(nccl_error("ncclReduce")),
        }?;
        *slot = Some(buffer);
        Ok(())
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.world.rank()
    }

    fn world_size(&self) -> usize {
        self.world.world_size()
    }

    fn all_reduce_sum(&self, buffer: &mut [f32]) -> Result<()> {
        self.with_comm(|comm| {
            let stream = comm.stream();
            let mut staged = stream.clone_htod(buffer).map_err(driver_error("copy to the GPU"))?;
            comm.all_reduce_in_place(&mut staged, &ReduceOp::Sum).map_err(nccl_error("ncclAllReduce"))?;
            stream.memcpy_dtoh(&staged, buffer).map_err(driver_error("copy from the GPU"))?;
            stream.synchronize().map_err(driver_error("synchronize"))
        })
    }

    /// True at any world size: a one-rank NCCL run exists to take the NCCL path, whose sum of one rank
    /// must leave every gradient as it was.
    fn sums(&self) -> bool {
        true
    }

    fn sums_on_device(&self) -> bool {
        true
    }

    fn all_reduce_sum_on_device(&self, buffer: &mut Tensor) -> Result<()> {
        let len = buffer.numel();
        self.check_buffer("a device bucket", buffer, len)?;
        let address = buffer.cuda_elements_mut()?;
        self.on_comm_stream(|comm| {
            let mut span = DeviceSpan { address, len, stream: comm.stream() };
            comm.all_reduce_in_place(&mut span, &ReduceOp::Sum).map_err(nccl_error("ncclAllReduce"))?;
            Ok(())
        })
    }

    /// Every bucket summed on the communication stream as it starts ([`StreamSums`]); when `body` is done
    /// (or failed: the other ranks take part in the sums it started) the compute stream waits for them.
    fn sum_buckets_on_device(
        &self,
        sizes: &[usize],
        owners: Option<&[usize]>,
        body: &mut dyn FnMut(&mut dyn BucketSums) -> Result<()>,
    ) -> Result<Vec<Tensor>> {
        let world_size = self.world_size();
        if let Some(owner) = owners.into_iter().flatten().find(|&&owner| owner >= world_size) {
            return Err(DistError::Nccl(format!("a bucket owned by rank {owner} of {world_size}")));
        }
        if owners.is_some_and(|owners| owners.len() != sizes.len()) {
            return Err(DistError::Nccl("one owner per bucket".into()));
        }
        self.with_comm(|comm| {
            let mut sums = StreamSums { nccl: self, comm, sizes, owners, buffers: vec![None; sizes.len()] };
            let outcome = body(&mut sums);
            self.compute.join(&comm.stream()).map_err(driver_error("wait for the communication stream"))?;
            outcome?;
            started_buckets(sums.buffers)
        })
    }

    /// `ncclAllGather` on the communication stream, between waits on the compute stream's work and for
    /// the gather (the shard is freed only after the second).
    fn all_gather_on_device(&self, mut shard: Tensor) -> Result<Tensor> {
        let (len, world_size) = (shard.numel(), self.world_size());
        self.check_buffer("a shard", &shard, len)?;
        let mut all = Tensor::zeros_on(&[len * world_size], DType::F32, Device::Cuda(self.ordinal))?;
        let (send, receive) = (shard.cuda_elements_mut()?, all.cuda_elements_mut()?);
        self.on_comm_stream(|comm| {
            let stream = comm.stream();
            let send = DeviceSpan { address: send, len, stream: stream.clone() };
            let mut receive = DeviceSpan { address: receive, len: len * world_size, stream };
            comm.all_gather(&send, &mut receive).map_err(nccl_error("ncclAllGather"))?;
            Ok(())
        })?;
        drop(shard);
        Ok(all)
    }

    /// A host gather (checkpoints under ZeRO-1), staged through the GPU on the communication stream.
    fn all_gather(&self, shard: &[f32], all: &mut [f32]) -> Result<()> {
        check_shards(all.len(), shard.len(), self.world_size())?;
        self.with_comm(|comm| {
            let stream = comm.stream();
            let send = stream.clone_htod(shard).map_err(driver_error("copy to the GPU"))?;
            let mut receive = stream.alloc_zeros::<f32>(all.len()).map_err(driver_error("allocate"))?;
            comm.all_gather(&send, &mut receive).map_err(nccl_error("ncclAllGather"))?;
            stream.memcpy_dtoh(&receive, all).map_err(driver_error("copy from the GPU"))?;
            stream.synchronize().map_err(driver_error("synchronize"))
        })
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        self.world.all_reduce_sum_f64(values)
    }

    fn broadcast(&self, buffer: &mut [u8], root: usize) -> Result<()> {
        self.world.broadcast(buffer, root)
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier()
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

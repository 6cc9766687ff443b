//! Gradient buckets summed between GPUs by NCCL (cudarc's `nccl` feature; `libnccl.so.2` is opened at
//! run time, so building needs no NCCL). The communicator is bootstrapped as llm.c does: rank 0 draws
//! NCCL's unique id and the process world broadcasts it, then every rank joins with its rank and world
//! size. The world is MPI's in a build with `mpi` started by a launcher, else one process: NCCL itself
//! needs no MPI, so a one-GPU build links none. Everything other than the f32 bucket sums (statistics,
//! broadcasts, barriers, abort) goes over the bootstrap world.
//!
//! GPU gradients are summed where they lie: `bucket.rs` assembles each bucket as a contiguous f32 GPU
//! tensor and this collective hands its storage to NCCL, on the stream every kernel of the device runs
//! on, so the sum is ordered after the copies that filled the bucket and before those that empty it,
//! with no synchronisation. A host buffer (`all_reduce_sum`) is staged through the GPU: copied from the
//! host, summed in place, copied back.
//!
//! cudarc's communicator holds a raw NCCL handle, which may not move between threads, so it lives in a
//! thread-local of the thread that created it; like MPI here, only that thread makes collective calls.
use super::{Collective, DistError, Result};
use cola_tensor::{DType, Device, Tensor};
use cudarc::driver::{sys::CUdeviceptr, CudaStream, DevicePtrMut, DeviceSlice, SyncOnDrop};
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
}

fn nccl_error(what: &str) -> impl FnOnce(cudarc::nccl::result::NcclError) -> DistError + '_ {
    move |e| DistError::Nccl(format!("{what}: {e:?}"))
}

fn driver_error(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> DistError + '_ {
    move |e| DistError::Nccl(format!("{what}: {e}"))
}

/// `len` f32 elements at a device address, on the communicator's stream: a tensor's storage (memory of the
/// engine's allocator, not a cudarc slice) in the form cudarc's NCCL calls take. The work around it is
/// ordered by that one stream, so handing out the address needs no event or synchronisation.
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

    /// Joins the NCCL communicator of `world`'s ranks on CUDA device `ordinal` (every rank calls it).
    pub fn over(world: Arc<dyn Collective>, ordinal: usize) -> Result<Nccl> {
        let device = cola_kernels::cuda::device(ordinal)
            .map_err(|e| DistError::Nccl(format!("cuda:{ordinal}: {e}")))?;
        let mut id = [0u8; 128];
        if world.is_root() {
            let drawn = Id::new().map_err(nccl_error("ncclGetUniqueId (is libnccl.so.2 installed?)"))?;
            for (byte, &c) in id.iter_mut().zip(drawn.internal()) {
                *byte = c as u8;
            }
        }
        world.broadcast(&mut id, 0)?;
        let comm = Comm::from_rank(
            device.stream().clone(),
            world.rank(),
            world.world_size(),
            Id::uninit(id.map(|b| b as _)),
        )
        .map_err(nccl_error("ncclCommInitRank"))?;
        COMM.with(|slot| *slot.borrow_mut() = Some(comm));
        Ok(Nccl { world, ordinal })
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
        if buffer.dtype() != DType::F32 || buffer.device() != Device::Cuda(self.ordinal) {
            return Err(DistError::Nccl(format!(
                "a device bucket is f32 on cuda:{}, not {} on {}",
                self.ordinal,
                buffer.dtype(),
                buffer.device()
            )));
        }
        let len = buffer.numel();
        let address = buffer.cuda_elements_mut()?;
        self.with_comm(|comm| {
            let mut span = DeviceSpan { address, len, stream: comm.stream() };
            comm.all_reduce_in_place(&mut span, &ReduceOp::Sum).map_err(nccl_error("ncclAllReduce"))?;
            Ok(())
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

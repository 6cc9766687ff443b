//! A caching device allocator: freed buffers go to per-size free lists and are handed out again, so a
//! training step after the first makes no `cuMemAlloc` calls. Sizes are rounded (512 B granules up to
//! 1 MiB, 2 MiB granules above) so buffers of nearly equal size share a list. On an allocation failure every
//! cached buffer is returned to the driver and the allocation retried once.
use super::runtime::CudaDevice;
use super::{CudaError, Result};
use cudarc::driver::result as driver;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Byte counters of one device's allocator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes of live buffers (rounded sizes).
    pub in_use: usize,
    /// Highest `in_use` since the last [`CudaDevice::reset_peak`].
    pub peak: usize,
    /// `in_use` plus cached free buffers: what the process holds from the driver.
    pub reserved: usize,
    /// `cuMemAlloc` calls so far (a steady training loop stops adding to it).
    pub driver_allocations: u64,
}

#[derive(Default)]
pub(crate) struct Pool {
    free: BTreeMap<usize, Vec<u64>>,
    stats: MemoryStats,
}

/// The rounded size a request of `bytes` occupies.
pub(crate) fn rounded(bytes: usize) -> usize {
    const SMALL: usize = 512;
    const LARGE: usize = 2 << 20;
    if bytes <= 1 << 20 {
        bytes.max(1).div_ceil(SMALL) * SMALL
    } else {
        bytes.div_ceil(LARGE) * LARGE
    }
}

impl Pool {
    pub(crate) fn stats(&self) -> MemoryStats {
        self.stats
    }

    pub(crate) fn reset_peak(&mut self) {
        self.stats.peak = self.stats.in_use;
    }

    /// A buffer of exactly `size` (already rounded) bytes: cached if one is free, else fresh from the
    /// driver. The device's context must be current on this thread.
    pub(crate) fn take(&mut self, size: usize) -> Result<u64> {
        let cached = self.free.get_mut(&size).and_then(Vec::pop);
        let ptr = match cached {
            Some(ptr) => ptr,
            None => {
                // SAFETY: a plain allocation; the pointer is owned by the pool from here on.
                let fresh = unsafe { driver::malloc_sync(size) };
                let ptr = match fresh {
                    Ok(ptr) => ptr,
                    Err(_) => {
                        self.release_cached()?;
                        // SAFETY: as above.
                        unsafe { driver::malloc_sync(size) }
                            .map_err(|_| CudaError::OutOfMemory { bytes: size, in_use: self.stats.in_use })?
                    }
                };
                self.stats.reserved += size;
                self.stats.driver_allocations += 1;
                ptr
            }
        };
        self.stats.in_use += size;
        self.stats.peak = self.stats.peak.max(self.stats.in_use);
        Ok(ptr)
    }

    pub(crate) fn give_back(&mut self, ptr: u64, size: usize) {
        self.stats.in_use -= size;
        self.free.entry(size).or_default().push(ptr);
    }

    /// Returns every cached buffer to the driver.
    pub(crate) fn release_cached(&mut self) -> Result<()> {
        for (size, ptrs) in std::mem::take(&mut self.free) {
            for ptr in ptrs {
                // SAFETY: `ptr` came from `malloc_sync` and no live buffer refers to it (it was given back).
                unsafe { driver::free_sync(ptr) }.map_err(|e| CudaError::driver("cuMemFree", e))?;
                self.stats.reserved -= size;
            }
        }
        Ok(())
    }
}

/// Device memory owned by one tensor storage; returned to its device's pool on drop.
pub struct DeviceBuffer {
    device: Arc<CudaDevice>,
    ptr: u64,
    /// Requested length in bytes.
    len: usize,
    /// Rounded size held from the pool.
    size: usize,
}

impl DeviceBuffer {
    pub(crate) fn new(device: Arc<CudaDevice>, len: usize) -> Result<DeviceBuffer> {
        let size = rounded(len);
        let ptr = device.with_pool(|pool| pool.take(size))?;
        Ok(DeviceBuffer { device, ptr, len, size })
    }

    /// The device address of the first byte.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Length in bytes as requested.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer(cuda:{}, {} bytes at {:#x})", self.device.ordinal(), self.len, self.ptr)
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        let (ptr, size) = (self.ptr, self.size);
        let _ = self.device.with_pool(|pool| {
            pool.give_back(ptr, size);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::rounded;

    #[test]
    fn sizes_round_to_granules() {
        assert_eq!(rounded(0), 512);
        assert_eq!(rounded(1), 512);
        assert_eq!(rounded(513), 1024);
        assert_eq!(rounded(1 << 20), 1 << 20);
        assert_eq!(rounded((1 << 20) + 1), 2 << 20);
        assert_eq!(rounded((5 << 20) + 7), 6 << 20);
    }
}

//! A pool of host buffers for tensor storage.
//!
//! Every CPU op returns a fresh buffer, and a fresh large buffer is fresh pages from the kernel: each page
//! faults in on its first write. A training step frees and re-allocates buffers of the same sizes every
//! step, so a freed buffer goes back to this pool (keyed by dtype and exact element count: the size class,
//! since a step's shapes repeat exactly) and the next output of that size takes it, already faulted in.
//!
//! Two ways to take a buffer, chosen by the op that fills it:
//! - [`take_for_overwrite`]: for ops whose kernel writes every element. A recycled buffer keeps the
//!   (initialised) values of the tensor it last held until the kernel overwrites them, so safe code never
//!   sees uninitialised memory and no time is spent zeroing.
//! - [`take_zeroed`]: for ops that accumulate into their output (it is zeroed like a fresh buffer).
//!
//! Bounded: the pool holds at most [`cap_bytes`], by default twice the peak of live CPU storage bytes seen
//! so far (so host memory stays under three times the largest live set), or `COLA_POOL_BYTES` bytes when
//! set. Why twice: in a repeating step each size class needs as many buffers as it ever had alive at once,
//! and those per-class peaks add up to more than the peak of all classes together (they fall at different
//! moments: forward activations, then gradients). With the cap at one peak, a cola-60m pure-bf16 step
//! (8 x 256 tokens) allocated 186 of its 894 outputs afresh; uncapped, the pool settled at 1.29 times the
//! peak with none. A buffer that does not fit makes room by freeing pooled buffers of the size classes
//! used longest ago (taken or returned), never of its own class; one larger than the cap is freed. So
//! sizes a program no longer asks for (the previous lengths of a growing decode cache, say) leave the pool
//! instead of keeping newer sizes out. `COLA_POOL=0` (or [`set_enabled`]) turns the pool off: every
//! output is then a fresh zeroed allocation, as before. Pooled buffers are not tensors: memory audits that
//! count live tensors do not see them, while the process's resident set size does.
use crate::storage::{CpuStorage, Element};
use crate::DType;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Counters of the pool and of live CPU storage, in bytes and takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of CPU storage held by tensors now.
    pub live_bytes: usize,
    /// The most `live_bytes` has been.
    pub peak_live_bytes: usize,
    /// Bytes of buffers waiting in the pool (by capacity).
    pub pooled_bytes: usize,
    /// Takes served by a pooled buffer.
    pub hits: usize,
    /// Takes that allocated afresh (pool empty for that size, or disabled).
    pub misses: usize,
}

#[derive(Default)]
struct Pool {
    classes: HashMap<(DType, usize), Class>,
    pooled_bytes: usize,
    hits: usize,
    misses: usize,
    /// Counts takes and returns: the clock of `Class::last_use`.
    clock: u64,
}

impl Pool {
    /// One pooled buffer of the class `key`, if any, out of the pool. A class left empty is dropped: an
    /// empty class is never a candidate for eviction, and dropping it keeps the map small.
    fn pop(&mut self, key: (DType, usize)) -> Option<CpuStorage> {
        let class = self.classes.get_mut(&key)?;
        let buffer = class.buffers.pop().expect("pooled classes are never empty");
        if class.buffers.is_empty() {
            self.classes.remove(&key);
        }
        self.pooled_bytes -= capacity_bytes(&buffer);
        Some(buffer)
    }
}

/// The pooled buffers of one dtype and element count.
#[derive(Default)]
struct Class {
    buffers: Vec<CpuStorage>,
    /// `Pool::clock` at the last take or return of this size.
    last_use: u64,
}

const UNSET: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(UNSET);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn pool() -> MutexGuard<'static, Pool> {
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    // A panic while holding the lock leaves the maps consistent (each update is one push or pop).
    POOL.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether freed buffers are recycled: `COLA_POOL=0` (or `off`, `false`) turns it off, unless
/// [`set_enabled`] has decided.
pub fn enabled() -> bool {
    match MODE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let off = std::env::var("COLA_POOL").is_ok_and(|v| matches!(v.trim(), "0" | "off" | "false"));
            let mode = if off { OFF } else { ON };
            // Another thread may have called `set_enabled` meanwhile: its choice wins.
            let _ = MODE.compare_exchange(UNSET, mode, Ordering::Relaxed, Ordering::Relaxed);
            MODE.load(Ordering::Relaxed) == ON
        }
    }
}

/// Turns recycling on or off for the whole process; turning it off frees every pooled buffer.
pub fn set_enabled(on: bool) {
    MODE.store(if on { ON } else { OFF }, Ordering::Relaxed);
    if !on {
        clear();
    }
}

/// Frees every pooled buffer.
pub fn clear() {
    let mut pool = pool();
    pool.classes.clear();
    pool.pooled_bytes = 0;
}

/// The most bytes the pool holds: `COLA_POOL_BYTES` when set to a number, else twice the peak live bytes.
pub fn cap_bytes() -> usize {
    static OVERRIDE: OnceLock<Option<usize>> = OnceLock::new();
    let fixed =
        OVERRIDE.get_or_init(|| std::env::var("COLA_POOL_BYTES").ok().and_then(|v| v.trim().parse().ok()));
    fixed.unwrap_or_else(|| PEAK.load(Ordering::Relaxed).saturating_mul(2))
}

pub fn stats() -> PoolStats {
    let pool = pool();
    PoolStats {
        live_bytes: LIVE.load(Ordering::Relaxed),
        peak_live_bytes: PEAK.load(Ordering::Relaxed),
        pooled_bytes: pool.pooled_bytes,
        hits: pool.hits,
        misses: pool.misses,
    }
}

fn capacity_bytes(storage: &CpuStorage) -> usize {
    let capacity = match storage {
        CpuStorage::F32(v) => v.capacity(),
        CpuStorage::F64(v) => v.capacity(),
        CpuStorage::BF16(v) => v.capacity(),
    };
    capacity * storage.dtype().size_in_bytes()
}

/// A pooled buffer of `n` elements of `T`, if any (its values are those it last held).
fn take<T: Element>(n: usize) -> Option<Vec<T>> {
    if n == 0 || !enabled() {
        return None;
    }
    let mut pool = pool();
    pool.clock += 1;
    let now = pool.clock;
    let key = (T::DTYPE, n);
    if let Some(class) = pool.classes.get_mut(&key) {
        class.last_use = now;
    }
    match pool.pop(key) {
        Some(storage) => {
            pool.hits += 1;
            // The class key holds the dtype, so the conversion succeeds.
            T::storage_into_vec(storage)
        }
        None => {
            pool.misses += 1;
            None
        }
    }
}

/// A buffer of `n` elements whose values are unspecified (but initialised): the caller must overwrite
/// every element before the buffer becomes a tensor.
pub(crate) fn take_for_overwrite<T: Element>(n: usize) -> Vec<T> {
    take(n).unwrap_or_else(|| vec![T::of_f64(0.0); n])
}

/// A buffer of `n` zeros, for ops that accumulate into their output.
pub(crate) fn take_zeroed<T: Element>(n: usize) -> Vec<T> {
    match take::<T>(n) {
        Some(mut v) => {
            v.fill(T::of_f64(0.0));
            v
        }
        None => vec![T::of_f64(0.0); n],
    }
}

/// Counts a new tensor storage of `bytes` as live.
pub(crate) fn on_create(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

/// Takes back the buffer of a dropped tensor storage of `bytes` live bytes: pooled when the pool is on
/// and has room, freed otherwise.
pub(crate) fn on_drop(storage: CpuStorage, bytes: usize) {
    // Saturating: a storage built without `on_create` must not wrap the counter.
    let _ = LIVE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| Some(l.saturating_sub(bytes)));
    if storage.is_empty() || !enabled() {
        return;
    }
    let size = capacity_bytes(&storage);
    let cap = cap_bytes();
    if size > cap {
        return;
    }
    let key = (storage.dtype(), storage.len());
    // Buffers evicted to make room, freed after the lock is released (freeing large buffers takes time).
    let mut evicted = Vec::new();
    let mut pool = pool();
    while pool.pooled_bytes + size > cap {
        let oldest = pool.classes.iter().filter(|(k, _)| **k != key).min_by_key(|(_, class)| class.last_use);
        let Some((&victim, _)) = oldest else {
            return; // only this size is pooled and it is full: the buffer is freed
        };
        evicted.extend(pool.pop(victim));
    }
    pool.clock += 1;
    let now = pool.clock;
    pool.pooled_bytes += size;
    let class = pool.classes.entry(key).or_default();
    class.last_use = now;
    class.buffers.push(storage);
    drop(pool);
    drop(evicted);
}

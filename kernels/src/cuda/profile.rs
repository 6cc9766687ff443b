//! An opt-in kernel profiler: with `COLA_CUDA_PROFILE=1` every kernel launch and GEMM is bracketed by
//! stream synchronisations and its wall time is added to a per-name table. Synchronising serialises the
//! host with the GPU, so totals are slower than a normal run, but each entry is the time of that kernel
//! alone: enough to see where a step goes without external tools.
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Whether `COLA_CUDA_PROFILE=1` was set when the process first asked.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("COLA_CUDA_PROFILE").is_ok_and(|v| v == "1"))
}

fn table() -> &'static Mutex<HashMap<String, (u64, f64)>> {
    static TABLE: OnceLock<Mutex<HashMap<String, (u64, f64)>>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// Adds one call of `name` that took `seconds`.
pub fn record(name: &str, start: Instant) {
    let seconds = start.elapsed().as_secs_f64();
    let mut t = table().lock().unwrap_or_else(|p| p.into_inner());
    let entry = t.entry(name.to_string()).or_default();
    entry.0 += 1;
    entry.1 += seconds;
}

/// `(name, calls, seconds)` sorted by time, largest first; the table is cleared.
pub fn take() -> Vec<(String, u64, f64)> {
    let mut t = table().lock().unwrap_or_else(|p| p.into_inner());
    let mut rows: Vec<(String, u64, f64)> = t.drain().map(|(k, (n, s))| (k, n, s)).collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    rows
}

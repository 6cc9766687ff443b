//! The host buffer pool changes no number: cola-tiny trained for 6 steps with the pool off and then on
//! (recycling from the second op of the run onward) logs bit-identical losses, and the pool did serve
//! outputs in the second run. Exact equality: a recycled buffer is either overwritten whole or zeroed, so
//! every op computes the same bits. Under half a second.
mod common;

use cola::tensor::pool;
use common::training::{tiny_config, trained, write_corpus};
use common::TempDir;
use std::path::Path;

/// The loss of every step line of `run_dir/metrics.jsonl`, as bits.
fn loss_bits(run_dir: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap().get("loss")?.as_f64())
        .map(f64::to_bits)
        .collect()
}

#[test]
fn losses_are_bit_identical_with_the_pool_on_and_off() {
    let dir = TempDir::new("pool");
    write_corpus(&dir);
    pool::set_enabled(false);
    let off = tiny_config(&dir, "cola-tiny", "off", 6);
    assert_eq!(trained(&off).steps, 6);

    pool::set_enabled(true);
    let hits = pool::stats().hits;
    let on = tiny_config(&dir, "cola-tiny", "on", 6);
    assert_eq!(trained(&on).steps, 6);
    assert!(pool::stats().hits > hits + 100, "the pool served outputs: {:?}", pool::stats());

    let (a, b) = (loss_bits(&dir.join("off")), loss_bits(&dir.join("on")));
    assert_eq!(a.len(), 6);
    assert_eq!(a, b);
}

//! Gradient sums that overlap backward (`--overlap`, the default) against sums after backward
//! (`--overlap false`), under `mpirun -np 2` and `-np 3`, with and without ZeRO-1 (`--zero 1`: each
//! bucket summed to the rank whose shard it lies in), on the tiny runs of this file's parent.
//!
//! What it proves: the two paths give the same losses and the same final `model.safetensors` BIT FOR
//! BIT. The bucket layout, each bucket's contents and its collective call are the same; only the
//! moment a bucket's sum starts differs, and each rank's accumulated gradient is the same additions in
//! the same order (the last micro-batch's gradients are added one parameter at a time as backward makes
//! them final, the others whole). Buckets of 16 KiB cut cola-tiny's gradients into several, so that
//! the order buckets start in (last to first, the same on every rank) is exercised; with 3 ranks a sum
//! of three terms depends on its grouping, so the collective call itself must be the same. The closing
//! line of the run must say how many bucket sums started during backward: all of them with overlap,
//! none without, so the test cannot pass with overlap silently off. About 6 s of launches.
use super::{flags, losses, mpirun, one_launch_at_a_time, weights, write_corpus};
use crate::common::TempDir;

/// Trains `dir/out` on `ranks` ranks (`batch` sequences per update in micro-batches of `micro`, 3
/// updates, buckets of 16 KiB) with `extra` flags; returns how many bucket sums the run started during
/// backward and how many it made, from its closing line.
fn run(dir: &TempDir, out: &str, ranks: usize, batch: usize, micro: usize, extra: &[&str]) -> (u64, u64) {
    let mut args = flags(dir, out, 3, batch, micro);
    args.extend(["--bucket-kib", "16"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let output = mpirun(ranks).args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the {ranks}-rank run {out} failed:\n{text}");
    let line = text.lines().find(|l| l.starts_with("done at step")).expect("a closing line");
    let counts = line.split(" bucket sums started during backward").next().unwrap();
    let words: Vec<&str> = counts.split_whitespace().rev().take(3).collect();
    assert_eq!(words[1], "of", "{line}");
    (words[2].parse().unwrap(), words[0].parse().unwrap())
}

fn overlap_is_the_sum_after_backward(ranks: usize, batch: usize, micro: usize, extra: &[&str]) {
    let _launch = one_launch_at_a_time();
    let dir = TempDir::new(&format!("dist-overlap-{ranks}-{}", extra.join("")));
    write_corpus(&dir);
    let (early, buckets) = run(&dir, "on", ranks, batch, micro, extra);
    let off = [extra, &["--overlap", "false"]].concat();
    let (early_off, buckets_off) = run(&dir, "off", ranks, batch, micro, &off);
    assert!(buckets > 3 && buckets % 3 == 0, "several buckets per update: {buckets} over 3 updates");
    assert_eq!((early, early_off, buckets_off), (buckets, 0, buckets), "sums started during backward");
    let (on, off) = (losses(&dir, "on"), losses(&dir, "off"));
    assert_eq!(on.len(), 3);
    let bits = |v: &[f64]| v.iter().map(|l| l.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&on), bits(&off), "losses: {on:?} vs {off:?}");
    assert!(weights(&dir, "on") == weights(&dir, "off"), "the final weights differ");
}

#[test]
fn overlapped_sums_over_two_ranks_are_the_sums_after_backward_bit_for_bit() {
    overlap_is_the_sum_after_backward(2, 4, 1, &[]);
}

#[test]
fn overlapped_sums_over_three_ranks_are_the_sums_after_backward_bit_for_bit() {
    overlap_is_the_sum_after_backward(3, 6, 1, &[]);
}

/// Under ZeRO-1 each bucket is also cut where a shard ends and summed to its owner alone.
#[test]
fn overlapped_sharded_sums_are_the_sharded_sums_after_backward_bit_for_bit() {
    overlap_is_the_sum_after_backward(2, 4, 1, &["--zero", "1"]);
    overlap_is_the_sum_after_backward(3, 6, 1, &["--zero", "1"]);
}

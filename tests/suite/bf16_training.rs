//! bf16 training on the CPU, both modes: `pure-bf16` (bf16 weights and AdamW moments, each update
//! computed in f32 and rounded once) and `bf16-mixed` (f32 master weights and moments) train cola-tiny,
//! and a run stopped after 2 of 4 updates and resumed from its checkpoint continues bit for bit: the
//! same train losses (compared as f64 bits, no tolerance: the runs are deterministic) and byte-identical
//! model and optimizer files. Each run is 4 updates of 8 x 16 tokens; about 2 s in all.
use crate::common;

use cola::train::{self, checkpoint, Options, Precision};
use common::training::{tiny_config, trained, write_corpus};
use common::TempDir;
use std::path::Path;

/// The train losses of `run/metrics.jsonl`, in step order, as bits.
fn loss_bits(run: &Path) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap().to_bits()))
        .collect()
}

fn checkpoint_bytes(run: &Path, file: &str) -> Vec<u8> {
    std::fs::read(checkpoint::locate(run).unwrap().join(file)).unwrap()
}

fn resume_is_bit_exact(precision: Precision, name: &str) {
    let dir = TempDir::new(name);
    write_corpus(&dir);
    let mut whole = tiny_config(&dir, "cola-tiny", "whole", 4);
    whole.precision = precision;
    assert_eq!(trained(&whole).steps, 4);

    let mut first = tiny_config(&dir, "cola-tiny", "halves", 4);
    first.precision = precision;
    first.stop_after = Some(2);
    assert_eq!(trained(&first).steps, 2);
    let options = Options {
        resume: Some(dir.join("halves")),
        cache_dir: Some(dir.join("cache")),
        ..Options::default()
    };
    let (second, _notes) = train::resolve(&options).unwrap();
    assert_eq!(second.precision, precision, "the checkpoint keeps the precision");
    assert_eq!(trained(&second).steps, 4);

    let (a, b) = (loss_bits(&dir.join("whole")), loss_bits(&dir.join("halves")));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "train losses differ");
    let losses: Vec<f64> = a.iter().map(|&(_, l)| f64::from_bits(l)).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[3] < losses[0], "no learning in 4 updates: {losses:?}");
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let same = checkpoint_bytes(&dir.join("whole"), file) == checkpoint_bytes(&dir.join("halves"), file);
        assert!(same, "{file} differs");
    }
}

#[test]
fn pure_bf16_trains_and_resumes_bit_for_bit() {
    resume_is_bit_exact(Precision::PureBf16, "bf16-pure-resume");
}

#[test]
fn bf16_mixed_trains_and_resumes_bit_for_bit() {
    resume_is_bit_exact(Precision::Bf16Mixed, "bf16-mixed-resume");
}

//! `--profile` on cola-tiny (d_model 32, 2 layers, rank 8) with a 300-entry BPE on a small text, on the
//! CPU: 1 warm-up and 2 measured steps of 8 x 16 tokens in two micro-batches of 4.
//!
//! What it proves: the rows (with `other`) sum to the measured step; every op family of the model shows
//! up in forward and backward with the number of calls the model makes; the matmul forward FLOPs, and
//! those of the LM head fused with the loss, equal the counts computed here from the config alone (so the
//! tape's accounting sees every product once, with the right shapes, and replays do not leak into
//! forward); replays appear as recompute rows under `cola-m` and not under `none`, and cola-m replays
//! exactly the five `@ B` products per layer that docs/METHOD.md section 7 derives, plus the attention
//! forward; the optimizer rows count one AdamW element update per parameter; after the warm-up step the
//! measured steps take op outputs from the host buffer pool, which stays within its cap.
//!
//! Counts and FLOPs are exact integers and compared with `==`. Shares are ratios of one clock: their sum
//! is 1 up to f64 rounding, far inside the 2% allowed; the `other` row must not be negative (timed ops
//! nested in one another, or a clock read outside the measured window, would make it so).
mod common;

use cola::train::{self, DeviceChoice, StepProfile, TrainConfig};
use cola_autograd::profile::Direction;
use cola_autograd::Policy;
use cola_nn::{Family, LlamaConfig, Preset, Size};
use cola_tensor::Rng;
use common::TempDir;

const VOCAB: usize = 300;
const SEQ: usize = 16;
const BATCH: usize = 8;
const MICRO_BATCH: usize = 4;
const MEASURED: u64 = 2;

fn write_corpus(dir: &TempDir) {
    let sentences =
        ["the cat sat on the mat.", "a dog ran to the red house.", "birds sing in the tall tree."];
    let mut rng = Rng::new(7);
    let text: Vec<&str> = (0..400).map(|_| sentences[rng.below(3) as usize]).collect();
    std::fs::write(dir.join("corpus.txt"), text.join(" ")).unwrap();
}

fn profile(dir: &TempDir, recompute: Policy) -> StepProfile {
    let mut config = TrainConfig::new(Preset::new(Family::Cola, Size::Tiny), dir.join("run"));
    config.vocab_size = Some(VOCAB);
    config.device = DeviceChoice::Cpu;
    config.data = Some(dir.join("corpus.txt"));
    config.cache_dir = Some(dir.join("cache"));
    config.seq_len = SEQ;
    config.batch_size = BATCH;
    config.micro_batch = MICRO_BATCH;
    config.steps = 10;
    config.warmup = 2;
    config.recompute = recompute;
    let report = train::profile(&config, 1, MEASURED).unwrap();
    assert!(!dir.join("run").exists(), "profiling writes no run directory");
    report
}

/// Matmul FLOPs of one forward pass of cola-tiny over `rows` sequences, from the config alone: every
/// projection of a layer is `x @ A` then `code @ B` (`2 tokens (in r + r out)`), four of d -> d in
/// attention, gate and up d -> ffn and down ffn -> d in the MLP. The head is fused with the loss and
/// counted in its own row ([`analytic_head_loss_flops`]).
fn analytic_forward_matmul_flops(rows: usize) -> u64 {
    let config = LlamaConfig::preset("cola-tiny").unwrap();
    let (d, f, r) = (config.d_model, config.ffn_dim, config.rank.unwrap());
    let tokens = rows * SEQ;
    let projection = |inputs: usize, outputs: usize| 2 * tokens * (inputs * r + r * outputs);
    let layer = 4 * projection(d, d) + 2 * projection(d, f) + projection(f, d);
    (config.n_layers * layer) as u64
}

/// FLOPs of the LM head fused with the loss over `rows` sequences, forward and backward: the head
/// multiplies the `seq - 1` positions that have a target by the `d x vocab` weight (`2 t d vocab`); the
/// recorded forward also forms the loss's gradient (4 per logit for the loss, 5 for its gradient) and the
/// two gradient products (`4 t d vocab`), so backward only scales them by a loss gradient of 1: nothing,
/// as `autograd/src/profile.rs` documents.
fn analytic_head_loss_flops(rows: usize) -> (u64, u64) {
    let d = LlamaConfig::preset("cola-tiny").unwrap().d_model;
    let (head, logits) = (2 * rows * (SEQ - 1) * d * VOCAB, rows * (SEQ - 1) * VOCAB);
    ((3 * head + 9 * logits) as u64, 0)
}

fn check_common(report: &StepProfile) {
    let share: f64 = report.rows.iter().map(|r| r.share).sum();
    assert!((share - 1.0).abs() <= 0.02, "shares sum to {share}");
    let other = report.rows.last().unwrap();
    assert_eq!((other.direction, other.family), (None, "other"));
    let (timed, measured) = (report.timed_seconds, report.measured_seconds);
    assert!(other.seconds >= 0.0, "timed rows {timed} s exceed the measured {measured} s");
    assert_eq!(report.tokens, MEASURED * (BATCH * SEQ) as u64, "packed batches have no padding");
    let host = &report.host;
    assert!(host.pool_hits > 0, "the measured steps reuse pooled buffers: {host:?}");
    assert!(host.pooled_bytes <= host.pool_cap_bytes, "{host:?}");

    let micro_batches = MEASURED * (BATCH / MICRO_BATCH) as u64;
    let layers = 2;
    for direction in [Direction::Forward, Direction::Backward] {
        let matmul = report.row(direction, "matmul").unwrap();
        // 7 CoLA projections of two products per layer; the head is in the fused loss.
        assert_eq!(matmul.calls, micro_batches * layers * 7 * 2, "{direction:?}");
        assert_eq!(report.row(direction, "attention").unwrap().calls, micro_batches * layers);
        let head_loss = report.row(direction, "head_cross_entropy").unwrap();
        let (forward_flops, backward_flops) = analytic_head_loss_flops(MICRO_BATCH);
        let flops = if direction == Direction::Forward { forward_flops } else { backward_flops };
        assert_eq!(
            (head_loss.calls, head_loss.flops),
            (micro_batches, micro_batches * flops),
            "{direction:?}"
        );
        for family in ["rms_norm", "rope", "silu", "embedding"] {
            assert!(report.row(direction, family).is_some_and(|r| r.calls > 0), "{family} {direction:?}");
        }
    }
    let forward = report.row(Direction::Forward, "matmul").unwrap();
    assert_eq!(
        forward.flops,
        MEASURED * (BATCH / MICRO_BATCH) as u64 * analytic_forward_matmul_flops(MICRO_BATCH)
    );
    let backward = report.row(Direction::Backward, "matmul").unwrap();
    assert_eq!(backward.flops, 2 * forward.flops);

    let params =
        LlamaConfig { vocab_size: VOCAB, ..LlamaConfig::preset("cola-tiny").unwrap() }.param_counts();
    let adamw = report.row(Direction::Optimizer, "adamw").unwrap();
    assert_eq!((adamw.calls, adamw.flops), (MEASURED, MEASURED * 14 * params.total as u64));
    assert_eq!(report.row(Direction::Optimizer, "clip_grad_norm").unwrap().calls, MEASURED);
    let accumulate = report.row(Direction::Optimizer, "grad_accumulate").unwrap();
    // The second micro-batch of each step adds into the first one's gradients.
    assert_eq!((accumulate.calls, accumulate.flops), (micro_batches, MEASURED * params.total as u64));

    let json = serde_json::to_value(report).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), report.rows.len());
    assert_eq!(json["measured_steps"].as_u64(), Some(MEASURED));
    assert!(format!("{report}").contains("forward    matmul"));
}

#[test]
fn profile_rows_sum_to_the_step_and_count_the_model() {
    let dir = TempDir::new("profile");
    write_corpus(&dir);
    let none = profile(&dir, Policy::KeepAll);
    check_common(&none);
    assert!(
        none.rows.iter().all(|r| r.direction != Some(Direction::Recompute)),
        "nothing is replayed under none"
    );

    let cola_m = profile(&dir, Policy::ColaM);
    check_common(&cola_m);
    // docs/METHOD.md section 7: cola-m keeps every `x @ A` and replays only the `@ B` products whose
    // outputs a backward rule reads: q, k and v (attention), gate and up (the gated product), 5 of 14.
    let replayed = cola_m.row(Direction::Recompute, "matmul").expect("cola-m replays the B products");
    let micro_batches = MEASURED * (BATCH / MICRO_BATCH) as u64;
    let config = LlamaConfig::preset("cola-tiny").unwrap();
    let (d, f, r) = (config.d_model as u64, config.ffn_dim as u64, config.rank.unwrap() as u64);
    let tokens = (MICRO_BATCH * SEQ) as u64;
    let replay_flops = 2 * tokens * (3 * r * d + 2 * r * f) * config.n_layers as u64;
    assert_eq!(
        (replayed.calls, replayed.flops),
        (micro_batches * config.n_layers as u64 * 5, micro_batches * replay_flops),
        "cola-m replays 5 of the 14 products of a layer"
    );
    let attention = cola_m.row(Direction::Recompute, "attention").expect("cola-m replays attention");
    assert_eq!(attention.calls, micro_batches * config.n_layers as u64);
}

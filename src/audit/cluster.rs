//! Section 4 of `docs/AUDIT.md`: what data parallelism costs per rank at 8 ranks. The bytes each rank
//! moves per update under plain data parallelism (one all-reduce of the gradient) and ZeRO-1 (a
//! reduce-scatter of the gradient and an all-gather of the updated parameters), as ring algorithms move
//! them, and their time at two link speeds; and the memory per GPU of the 7b presets under each scheme
//! and precision, with the saved activations of the preset's GPU micro-batch under each recompute
//! policy. Shard sizes come from the code's own layout (`dist::zero::shard_elements`, the last shard
//! padded) and the optimizer state from AdamW's own choice of dtypes (`AdamW::state_dtype`); the f32
//! moments per rank are compared with `dist::zero::optimizer_bytes_per_rank`, what `--audit` and the
//! start-up line print.
use super::checks::{agree, AuditError};
use super::document::grouped;
use super::formulas::{gpu_saved_bytes, params, Batch, Dims};
use super::human_bytes;
use super::probes::policies;
use crate::dist::zero::{optimizer_bytes_per_rank, shard_elements};
use crate::train::options::Precision;
use cola_autograd::Policy;
use cola_nn::{Family, Preset, Size};
use cola_optim::{AdamW, AdamWConfig};
use std::fmt::Write as _;

/// The world the tables describe: 8 ranks, one GPU each.
pub const RANKS: u64 = 8;

/// Link speeds the traffic is priced at, in GB/s (10^9 bytes): a 200 Gb/s network port, and NVLink
/// between the GPUs of one node.
pub const LINKS_GB_S: [f64; 2] = [25.0, 400.0];

/// A GPU's memory: 80 GiB.
pub const GPU_BYTES: u64 = 80 << 30;

/// Bytes of a gradient element in the sums (buckets are summed in f32, `dist/bucket.rs`) and of a
/// parameter in ZeRO-1's all-gather (the sharded update all-gathers f32 values, `dist/zero.rs`).
pub const SUM_ELEMENT_BYTES: u64 = 4;

const SIZES: [Size; 5] = [Size::M60, Size::M130, Size::M350, Size::B1, Size::B7];

/// Bytes one rank sends in a ring reduce-scatter of `elements` values of `elem` bytes over `ranks`:
/// `N - 1` steps, each passing one shard of `ceil(P / N)` elements to the next rank.
pub fn ring_reduce_scatter_bytes(elements: u64, elem: u64, ranks: u64) -> u64 {
    (ranks - 1) * shard_elements(elements as usize, ranks as usize) as u64 * elem
}

/// A ring all-gather moves what a ring reduce-scatter moves: `N - 1` shards per rank.
pub fn ring_all_gather_bytes(elements: u64, elem: u64, ranks: u64) -> u64 {
    ring_reduce_scatter_bytes(elements, elem, ranks)
}

/// A ring all-reduce is a reduce-scatter followed by an all-gather: `2 (N - 1) ceil(P / N) e` per rank.
pub fn ring_all_reduce_bytes(elements: u64, elem: u64, ranks: u64) -> u64 {
    ring_reduce_scatter_bytes(elements, elem, ranks) + ring_all_gather_bytes(elements, elem, ranks)
}

/// Milliseconds `bytes` take at `gb_s` GB/s (bandwidth only: no latency, no overlap).
fn millis(bytes: u64, gb_s: f64) -> String {
    format!("{:.1}", bytes as f64 / (gb_s * 1e9) * 1e3)
}

/// Model-state bytes per rank of `params` parameters: weights, gradients (the weights' dtype), f32
/// master copies and the two AdamW moments; under ZeRO-1 masters and moments for one shard only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct States {
    pub weights: u64,
    pub gradients: u64,
    pub masters: u64,
    pub moments: u64,
}

impl States {
    pub fn of(params: u64, precision: Precision, ranks: u64, zero: bool) -> States {
        let dtype = precision.param_dtype();
        let config =
            AdamWConfig { master_weights: precision != Precision::PureBf16, ..AdamWConfig::default() };
        let (mixed, moment) = AdamW::new(config).state_dtype(dtype);
        let held = if zero { shard_elements(params as usize, ranks as usize) as u64 } else { params };
        let weights = params * dtype.size_in_bytes() as u64;
        let masters = if mixed { held * 4 } else { 0 };
        States { weights, gradients: weights, masters, moments: 2 * held * moment.size_in_bytes() as u64 }
    }

    pub fn total(&self) -> u64 {
        self.weights + self.gradients + self.masters + self.moments
    }
}

/// Writes section 4.
pub fn section(out: &mut String) -> Result<(), AuditError> {
    let [slow, fast] = LINKS_GB_S;
    let _ = write!(
        out,
        "\n## 4. Data parallelism at {RANKS} ranks: traffic and memory per GPU\n\n\
         Bytes each rank sends per update (and receives as many) with ring algorithms over `N = {RANKS}` \
         ranks, for `P` parameters of `e` bytes: a reduce-scatter passes one shard of `ceil(P / N)` \
         elements on at each of `N - 1` steps, `(N - 1) ceil(P / N) e`; an all-gather the same; an \
         all-reduce is the two, `2 (N - 1) ceil(P / N) e`. Plain data parallelism (DDP) all-reduces the \
         gradient; ZeRO-1 reduce-scatters it and all-gathers the updated parameters, so it moves the same \
         bytes in two halves. Gradients are summed in f32 and ZeRO-1 gathers f32 values (`e = \
         {SUM_ELEMENT_BYTES}`, what `src/dist/` sends). Times are bytes over bandwidth at {slow} GB/s \
         (a 200 Gb/s network port) and {fast} GB/s (NVLink within a node), no latency and no overlap \
         with backward.\n\n\
         | preset | P | DDP all-reduce | ZeRO-1 reduce-scatter | ZeRO-1 all-gather | either, ms at {slow} GB/s | either, ms at {fast} GB/s |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for family in [Family::Cola, Family::Full] {
        for size in SIZES {
            let preset = Preset::new(family, size);
            let p = params(&Dims::of(&preset.config())).total;
            let e = SUM_ELEMENT_BYTES;
            let (all_reduce, scatter, gather) = (
                ring_all_reduce_bytes(p, e, RANKS),
                ring_reduce_scatter_bytes(p, e, RANKS),
                ring_all_gather_bytes(p, e, RANKS),
            );
            let _ = writeln!(
                out,
                "| {preset} | {} | {} | {} | {} | {} | {} |",
                grouped(p),
                human_bytes(all_reduce as f64),
                human_bytes(scatter as f64),
                human_bytes(gather as f64),
                millis(all_reduce, slow),
                millis(all_reduce, fast)
            );
        }
    }
    memory(out)
}

/// The memory tables of the 7b presets.
fn memory(out: &mut String) -> Result<(), AuditError> {
    let _ = write!(
        out,
        "\nMemory per GPU at {RANKS} ranks: weights and gradients in bf16 (2 bytes per parameter each, every \
         rank whole); under bf16-mixed f32 master weights and f32 moments (12 bytes per parameter), under \
         pure bf16 no masters and bf16 moments (4 bytes), as `AdamW::state_dtype` chooses; ZeRO-1 keeps \
         masters and moments for one shard of `ceil(P / N)` parameters. Activations are section 3's bf16 \
         saved bytes on a GPU for the preset's GPU micro-batch of `b` sequences of 256 tokens, per \
         recompute policy; a total fits when it is at most 80 GiB. Not counted: the f32 copy of the \
         gradient a bucketed sum on the GPU holds while it runs, backward's working set beyond the saved \
         values, the CUDA context and the allocator's slack.\n"
    );
    for family in [Family::Cola, Family::Full] {
        let preset = Preset::new(family, Size::B7);
        let config = preset.config();
        let dims = Dims::of(&config);
        let p = params(&dims).total;
        let batch = Batch { b: preset.gpu_micro_batch() as u64, n: 256 };
        let flash = matches!(config.head_dim(), 64 | 128);
        let policies: Vec<Policy> = policies(&config);
        let activations: Vec<u64> =
            policies.iter().map(|&policy| gpu_saved_bytes(&dims, batch, policy, flash)).collect();
        let _ = write!(
            out,
            "\n{preset}: P = {}, micro-batch b = {}; activations {}.\n\n\
             | scheme | precision | weights | gradients | masters | moments | states |",
            grouped(p),
            batch.b,
            policies
                .iter()
                .zip(&activations)
                .map(|(policy, bytes)| format!("{} {}", policy.name(), human_bytes(*bytes as f64)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for policy in &policies {
            let _ = write!(out, " + {} |", policy.name());
        }
        let _ = write!(out, "\n|---|---|---|---|---|---|---|{}\n", "---|".repeat(policies.len()));
        for precision in [Precision::Bf16Mixed, Precision::PureBf16] {
            for zero in [false, true] {
                let states = States::of(p, precision, RANKS, zero);
                if precision == Precision::Bf16Mixed {
                    // The f32 moments are what the code reports per rank (`--audit`, the start-up line).
                    let code = optimizer_bytes_per_rank(p as usize, RANKS as usize, zero) as u64;
                    agree(|| format!("{preset}: f32 moments per rank (zero {zero})"), states.moments, code)?;
                }
                let _ = write!(
                    out,
                    "| {} | {precision} | {} | {} | {} | {} | {} |",
                    if zero { "ZeRO-1" } else { "DDP" },
                    human_bytes(states.weights as f64),
                    human_bytes(states.gradients as f64),
                    human_bytes(states.masters as f64),
                    human_bytes(states.moments as f64),
                    human_bytes(states.total() as f64)
                );
                for bytes in &activations {
                    let total = states.total() + bytes;
                    let fits = if total <= GPU_BYTES { "fits" } else { "over" };
                    let _ = write!(out, " {} {fits} |", human_bytes(total as f64));
                }
                out.push('\n');
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The ring formulas and the state bytes on numbers small enough to count by hand; exact integers.
    use super::*;

    #[test]
    fn ring_traffic_is_n_minus_1_shards_per_half_with_the_last_shard_padded() {
        // 10 elements over 4 ranks: shards of 3 (the last padded); 3 steps of 3 f32 each way.
        assert_eq!(ring_reduce_scatter_bytes(10, 4, 4), 3 * 3 * 4);
        assert_eq!(ring_all_gather_bytes(10, 4, 4), 36);
        assert_eq!(ring_all_reduce_bytes(10, 4, 4), 72);
        assert_eq!(ring_all_reduce_bytes(10, 4, 1), 0, "one rank sends nothing");
    }

    #[test]
    fn states_follow_the_precision_and_shard_masters_and_moments_only() {
        // 16 parameters over 8 ranks: shards of 2.
        let mixed = States::of(16, Precision::Bf16Mixed, 8, false);
        assert_eq!(mixed, States { weights: 32, gradients: 32, masters: 64, moments: 128 });
        let sharded = States::of(16, Precision::Bf16Mixed, 8, true);
        assert_eq!(sharded, States { weights: 32, gradients: 32, masters: 8, moments: 16 });
        let pure = States::of(16, Precision::PureBf16, 8, true);
        assert_eq!((pure.masters, pure.moments, pure.total()), (0, 8, 72));
    }
}

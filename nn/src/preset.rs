//! The presets: one table row per model size holding its shapes (docs/METHOD.md section 4), its training
//! recipe (section 6) and its default micro-batches, so that nothing else spells out a size or parses a
//! preset name. A [`Preset`] is a family (CoLA or the dense baseline) times a size.
use crate::config::LlamaConfig;
use crate::error::NnError;
use crate::variant::LowRankActivation;
use std::fmt;
use std::str::FromStr;

/// CoLA low-rank projections, or the full-rank (dense) LLaMA baseline of the same shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Cola,
    Full,
}

/// A model size of the paper, plus `Tiny` for tests and the experiment sizes (`Small`, `Small2L`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Size {
    Tiny,
    M60,
    M130,
    M350,
    B1,
    B7,
    /// d 256, 4 layers, an 8192-entry vocabulary: an ablation that sees millions of tokens in minutes
    /// on a CPU.
    Small,
    /// `Small` with 2 layers: `full-small-2l` costs about the training FLOPs per token of `cola-small`.
    Small2L,
}

/// The paper's training recipe of one size: linear warmup to `peak_lr`, cosine decay to 10% at
/// `total_steps`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recipe {
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

/// One row of the table: everything a size decides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizeSpec {
    pub size: Size,
    pub vocab_size: usize,
    pub d_model: usize,
    pub ffn_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Width `r` of the CoLA bottlenecks (unused by the full-rank family).
    pub rank: usize,
    /// Whether the CoLA model's MLP keeps its own gate SiLU (the paper keeps it for 60m and 130m and
    /// drops it from 350m up). The full-rank baseline is plain LLaMA and always keeps it.
    pub cola_gate_silu: bool,
    pub max_seq_len: usize,
    pub recipe: Recipe,
    /// Sequences per forward/backward pass on a CPU: keeps the activations of one pass (all kept for
    /// backward) within a few GiB. Measured for cola-350m: peak memory 5.5 GB at 4 sequences of 256
    /// tokens, 8.1 GB at 8 (about 0.65 GB per sequence on top of weights, gradients and AdamW state), at
    /// the same tokens/s, so 4 leaves room on a 16 GB machine; 1b and 7b scale that down.
    pub cpu_micro_batch: usize,
    /// Sequences per forward/backward pass on one GPU: the paper's micro-batches (64 up to 350m, 32 for
    /// 1b) in bf16 on an 80+ GB device; 7b at 8.
    pub gpu_micro_batch: usize,
}

const fn recipe(peak_lr: f64, warmup_steps: u64, total_steps: u64) -> Recipe {
    Recipe { peak_lr, warmup_steps, total_steps }
}

/// The table. Paper sizes: vocabulary 32000, sequence length 256, recipes of docs/METHOD.md section 6.
/// `tiny` (tests only) borrows the 60m learning rate with a short schedule. The experiment sizes
/// (docs/EXPERIMENTS.md) are outside the paper: half 60m's width, 4 (or 2) layers, the rank at 60m's ratio
/// `r = d / 4`, the ffn at its ratio `f = 2.6875 d`, an 8192-entry BPE of the corpus (at 32000 the head
/// would be most of the compute), and half 60m's peak learning rate (3e-3, for the full-rank twin's sake:
/// the comparison runs both at one rate); the schedule is set by the experiment's token budget.
pub const SIZES: [SizeSpec; 8] = [
    SizeSpec {
        size: Size::Tiny,
        vocab_size: 64,
        d_model: 32,
        ffn_dim: 48,
        n_layers: 2,
        n_heads: 4,
        rank: 8,
        cola_gate_silu: true,
        max_seq_len: 16,
        recipe: recipe(6e-3, 20, 200),
        cpu_micro_batch: 8,
        gpu_micro_batch: 64,
    },
    SizeSpec {
        size: Size::M60,
        vocab_size: 32000,
        d_model: 512,
        ffn_dim: 1376,
        n_layers: 8,
        n_heads: 8,
        rank: 128,
        cola_gate_silu: true,
        max_seq_len: 256,
        recipe: recipe(6e-3, 2000, 10000),
        cpu_micro_batch: 8,
        gpu_micro_batch: 64,
    },
    SizeSpec {
        size: Size::M130,
        vocab_size: 32000,
        d_model: 768,
        ffn_dim: 2048,
        n_layers: 12,
        n_heads: 12,
        rank: 256,
        cola_gate_silu: true,
        max_seq_len: 256,
        recipe: recipe(3e-3, 2000, 20000),
        cpu_micro_batch: 8,
        gpu_micro_batch: 64,
    },
    SizeSpec {
        size: Size::M350,
        vocab_size: 32000,
        d_model: 1024,
        ffn_dim: 2736,
        n_layers: 24,
        n_heads: 16,
        rank: 256,
        cola_gate_silu: false,
        max_seq_len: 256,
        recipe: recipe(3e-3, 6000, 60000),
        cpu_micro_batch: 4,
        gpu_micro_batch: 64,
    },
    SizeSpec {
        size: Size::B1,
        vocab_size: 32000,
        d_model: 2048,
        ffn_dim: 5461,
        n_layers: 24,
        n_heads: 32,
        rank: 512,
        cola_gate_silu: false,
        max_seq_len: 256,
        recipe: recipe(2e-3, 10000, 100000),
        cpu_micro_batch: 2,
        gpu_micro_batch: 32,
    },
    SizeSpec {
        size: Size::B7,
        vocab_size: 32000,
        d_model: 4096,
        ffn_dim: 11008,
        n_layers: 32,
        n_heads: 32,
        rank: 1024,
        cola_gate_silu: false,
        max_seq_len: 256,
        recipe: recipe(1e-3, 15000, 150000),
        cpu_micro_batch: 1,
        gpu_micro_batch: 8,
    },
    SizeSpec {
        size: Size::Small,
        vocab_size: 8192,
        d_model: 256,
        ffn_dim: 688,
        n_layers: 4,
        n_heads: 4,
        rank: 64,
        cola_gate_silu: true,
        max_seq_len: 256,
        recipe: recipe(3e-3, 100, 1000),
        cpu_micro_batch: 8,
        gpu_micro_batch: 64,
    },
    SizeSpec {
        size: Size::Small2L,
        vocab_size: 8192,
        d_model: 256,
        ffn_dim: 688,
        n_layers: 2,
        n_heads: 4,
        rank: 64,
        cola_gate_silu: true,
        max_seq_len: 256,
        recipe: recipe(3e-3, 100, 1000),
        cpu_micro_batch: 8,
        gpu_micro_batch: 64,
    },
];

/// Constants shared by every preset (docs/METHOD.md section 3).
const ROPE_THETA: f64 = 10000.0;
const NORM_EPS: f64 = 1e-6;
const PAD_ID: u32 = 0;

// The rows are in `Size` order, so that `Size::spec` is an index.
const _: () = {
    let mut i = 0;
    while i < SIZES.len() {
        assert!(SIZES[i].size as usize == i);
        i += 1;
    }
};

impl Size {
    /// The paper's sizes and `Tiny`.
    pub const ALL: [Size; 6] = [Size::Tiny, Size::M60, Size::M130, Size::M350, Size::B1, Size::B7];
    /// The sizes of the experiments, outside the paper.
    pub const EXPERIMENT: [Size; 2] = [Size::Small, Size::Small2L];

    /// This size's row of [`SIZES`].
    pub const fn spec(self) -> &'static SizeSpec {
        &SIZES[self as usize]
    }
}

impl Family {
    pub const fn prefix(self) -> &'static str {
        match self {
            Family::Cola => "cola",
            Family::Full => "full",
        }
    }
}

/// A model preset: `cola-60m`, `full-350m`, `cola-tiny`, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Preset {
    pub family: Family,
    pub size: Size,
}

/// The names of [`Preset::ALL`] then [`Preset::EXPERIMENT`], in their order: a preset's index is
/// its family's offset (0 for CoLA, 8 for full rank) plus its size.
const ALL_NAMES: [&str; 16] = [
    "cola-tiny",
    "cola-60m",
    "cola-130m",
    "cola-350m",
    "cola-1b",
    "cola-7b",
    "cola-small",
    "cola-small-2l",
    "full-tiny",
    "full-60m",
    "full-130m",
    "full-350m",
    "full-1b",
    "full-7b",
    "full-small",
    "full-small-2l",
];

/// The names of [`Preset::ALL`], in its order.
const NAMES: [&str; 12] = [
    "cola-tiny",
    "cola-60m",
    "cola-130m",
    "cola-350m",
    "cola-1b",
    "cola-7b",
    "full-tiny",
    "full-60m",
    "full-130m",
    "full-350m",
    "full-1b",
    "full-7b",
];

impl Preset {
    /// Every preset: the CoLA family in size order, then the full-rank one.
    pub const ALL: [Preset; 12] = {
        let mut all = [Preset { family: Family::Cola, size: Size::Tiny }; 12];
        let mut i = 0;
        while i < 6 {
            all[i] = Preset { family: Family::Cola, size: Size::ALL[i] };
            all[i + 6] = Preset { family: Family::Full, size: Size::ALL[i] };
            i += 1;
        }
        all
    };

    /// The names of [`Preset::ALL`], in its order.
    pub const NAMES: [&'static str; 12] = NAMES;

    /// The experiment presets, outside the paper: both families of [`Size::EXPERIMENT`].
    pub const EXPERIMENT: [Preset; 4] = [
        Preset { family: Family::Cola, size: Size::Small },
        Preset { family: Family::Cola, size: Size::Small2L },
        Preset { family: Family::Full, size: Size::Small },
        Preset { family: Family::Full, size: Size::Small2L },
    ];

    /// Every name a preset answers to: [`Preset::NAMES`] and the experiment presets.
    pub const ALL_NAMES: [&'static str; 16] = ALL_NAMES;

    pub const fn new(family: Family, size: Size) -> Preset {
        Preset { family, size }
    }

    /// The name, e.g. `cola-350m`.
    pub const fn name(self) -> &'static str {
        let family = match self.family {
            Family::Cola => 0,
            Family::Full => 8,
        };
        ALL_NAMES[family + self.size as usize]
    }

    pub const fn spec(self) -> &'static SizeSpec {
        self.size.spec()
    }

    pub const fn is_cola(self) -> bool {
        matches!(self.family, Family::Cola)
    }

    /// The model's shapes and constants.
    pub fn config(self) -> LlamaConfig {
        let spec = self.spec();
        let cola = self.is_cola();
        LlamaConfig {
            vocab_size: spec.vocab_size,
            d_model: spec.d_model,
            ffn_dim: spec.ffn_dim,
            n_layers: spec.n_layers,
            n_heads: spec.n_heads,
            rank: cola.then_some(spec.rank),
            lowrank_act: LowRankActivation::Silu,
            mlp_gate_silu: !cola || spec.cola_gate_silu,
            rope_theta: ROPE_THETA,
            norm_eps: NORM_EPS,
            max_seq_len: spec.max_seq_len,
            pad_id: PAD_ID,
        }
    }

    pub const fn recipe(self) -> Recipe {
        self.spec().recipe
    }

    /// See [`SizeSpec::cpu_micro_batch`].
    pub const fn cpu_micro_batch(self) -> usize {
        self.spec().cpu_micro_batch
    }

    /// See [`SizeSpec::gpu_micro_batch`].
    pub const fn gpu_micro_batch(self) -> usize {
        self.spec().gpu_micro_batch
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = NnError;

    /// A name of [`Preset::ALL_NAMES`]; anything else is [`NnError::UnknownPreset`] listing them.
    fn from_str(name: &str) -> Result<Preset, NnError> {
        Preset::ALL
            .into_iter()
            .chain(Preset::EXPERIMENT)
            .find(|p| p.name() == name)
            .ok_or_else(|| NnError::UnknownPreset { name: name.to_string(), valid: ALL_NAMES.join(", ") })
    }
}

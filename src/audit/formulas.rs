//! Closed forms of what a model costs, each next to the text the document prints for it: parameter
//! counts, the FLOPs the profiler counts per direction and retention policy, and the activation bytes the
//! tape saves per policy. They are written independently of the code they describe (the shapes in
//! `LlamaConfig::parameter_shapes`, the per-op counts of `cola_autograd::profile::flops`, the tape's
//! accounting in `cola_autograd::memory`), so that `docs/AUDIT.md` can compare the two and fail on any
//! difference (`super::checks`). Everything is an exact integer over a micro-batch; per-token figures
//! divide at the end.
use cola_autograd::{Policy, Retention, SlotKind};
use cola_nn::LlamaConfig;

/// The sizes the formulas are written in: `d` hidden, `f` MLP width, `r` rank (CoLA only), `L` layers,
/// `V` vocabulary, `h` heads; `b` sequences of `n` tokens per micro-batch, `T = b n` tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub d: u64,
    pub f: u64,
    pub r: Option<u64>,
    pub layers: u64,
    pub vocab: u64,
    pub heads: u64,
    /// Whether the MLP applies SiLU to its gate (`g = 5` FLOPs per element of the gated product, else 1).
    pub gate_silu: bool,
}

impl Dims {
    pub fn of(config: &LlamaConfig) -> Dims {
        Dims {
            d: config.d_model as u64,
            f: config.ffn_dim as u64,
            r: config.rank.map(|r| r as u64),
            layers: config.n_layers as u64,
            vocab: config.vocab_size as u64,
            heads: config.n_heads as u64,
            gate_silu: config.mlp_gate_silu,
        }
    }
}

/// A micro-batch: `b` sequences of `n` tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    pub b: u64,
    pub n: u64,
}

impl Batch {
    pub fn tokens(&self) -> u64 {
        self.b * self.n
    }

    /// Query-key pairs causal attention visits over the micro-batch, per head: `b n (n + 1) / 2`.
    fn causal_pairs(&self) -> u64 {
        self.b * self.n * (self.n + 1) / 2
    }

    /// Positions that predict a next token (the head and the loss run on these): `b (n - 1)`.
    fn predicting(&self) -> u64 {
        self.b * (self.n - 1)
    }
}

/// Parameter counts: low-rank factors, and everything else (embedding, head, RMSNorm weights, dense
/// projections).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    pub total: u64,
    pub low_rank: u64,
    pub dense: u64,
}

/// The text of [`params`]: `(low-rank, dense)` for a CoLA or a full-rank model.
pub fn params_text(cola: bool) -> (&'static str, &'static str) {
    if cola {
        ("L r (11 d + 3 f)", "2 V d + (2 L + 1) d")
    } else {
        ("0", "L (4 d^2 + 3 d f) + 2 V d + (2 L + 1) d")
    }
}

/// Per layer, the seven projections hold `r (in + out)` (CoLA: q, k, v, o `r 2d`, gate and up `r (d + f)`,
/// down `r (f + d)`) or `in out` weights, plus two RMSNorm weights; outside the layers the embedding and
/// the untied head (`V d` each) and the final norm.
pub fn params(dims: &Dims) -> Params {
    let Dims { d, f, layers: l, vocab: v, .. } = *dims;
    let outside = 2 * v * d + (2 * l + 1) * d;
    let (low_rank, dense) = match dims.r {
        Some(r) => (l * r * (11 * d + 3 * f), outside),
        None => (0, l * (4 * d * d + 3 * d * f) + outside),
    };
    Params { total: low_rank + dense, low_rank, dense }
}

/// FLOPs of one step over a micro-batch, per direction of the profiler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    /// The forward as a model: layers, final norm, head product and loss (what inference would count).
    pub model_forward: u64,
    /// What the fused head and loss add in a recorded forward: the loss gradient and the two gradient
    /// products it forms there (counted in the profiler's forward rows).
    pub head_gradients: u64,
    pub backward: u64,
    pub recompute: u64,
}

impl Counted {
    /// The profiler's forward rows: the model's forward and the head's gradients.
    pub fn forward_rows(&self) -> u64 {
        self.model_forward + self.head_gradients
    }

    pub fn training(&self) -> u64 {
        self.forward_rows() + self.backward + self.recompute
    }
}

/// Texts of [`counted`], in the symbols of [`Dims`]; `P` is a layer's projection product (CoLA
/// `2 r (11 d + 3 f)`, dense `2 (4 d^2 + 3 d f)`), `s = 28 r` the seven SiLUs (0 dense), `g` the gated
/// product (5 with the gate SiLU, 1 without), `g' = 11` or 2 its backward, `A = 2 d n (n + 1)` causal
/// attention per sequence.
pub const COUNTED_TEXT: [(&str, &str); 6] = [
    ("forward, per layer", "T (P + 16 d + s + g f) + b A"),
    ("forward, outside the layers", "4 T d + b (n - 1) (2 d V + 4 V)"),
    ("head gradients formed in forward", "b (n - 1) (4 d V + 5 V)"),
    ("backward, per layer", "T (2 P + 33 d + 9 s / 4 + g' f) + 5 b A / 2"),
    ("backward, outside the layers", "10 T d"),
    ("recompute, per layer", "none 0; cola-m T (14 d + s + Q + g f) + b A; block forward - T (D + d)"),
];

/// Per-layer forward pieces over a micro-batch (what a replay may need again).
struct LayerForward {
    /// The two RMSNorms (4 per element).
    norms: u64,
    /// CoLA's `x @ A` products of the seven projections (0 dense).
    into_rank: u64,
    /// The seven SiLUs of the codes (4 per element).
    silu: u64,
    /// The products that form q, k, v, gate and up (`code @ B`, or the dense products): `Q`.
    qkv_gate_up: u64,
    /// The products that form o and down's outputs; `D` is down's.
    o_out: u64,
    down_out: u64,
    /// RoPE on q and k (3 per element).
    rope: u64,
    /// Causal attention: `q k^T` and `p v` over the visited pairs.
    attention: u64,
    /// The gated product `act(gate) * up`.
    gated: u64,
    /// The two residual adds (1 per element each).
    adds: u64,
}

impl LayerForward {
    fn new(dims: &Dims, batch: Batch) -> LayerForward {
        let Dims { d, f, .. } = *dims;
        let t = batch.tokens();
        let (into_rank, silu, qkv_gate_up, o_out, down_out) = match dims.r {
            Some(r) => (2 * r * (6 * d + f), 28 * r, 2 * r * (3 * d + 2 * f), 2 * r * d, 2 * r * d),
            None => (0, 0, 2 * (3 * d * d + 2 * d * f), 2 * d * d, 2 * f * d),
        };
        LayerForward {
            norms: 8 * d * t,
            into_rank: into_rank * t,
            silu: silu * t,
            qkv_gate_up: qkv_gate_up * t,
            o_out: o_out * t,
            down_out: down_out * t,
            rope: 6 * d * t,
            attention: 4 * d * batch.causal_pairs(),
            gated: if dims.gate_silu { 5 } else { 1 } * f * t,
            adds: 2 * d * t,
        }
    }

    fn products(&self) -> u64 {
        self.into_rank + self.qkv_gate_up + self.o_out + self.down_out
    }

    fn total(&self) -> u64 {
        self.norms + self.products() + self.silu + self.rope + self.attention + self.gated + self.adds
    }

    /// What backward needs again under `policy`: with CoLA-M (kept: the residual stream and `x @ A`) the
    /// norms, the codes, the q, k, v, gate and up outputs, RoPE, attention (its backward reads its
    /// output) and the gated product; with block everything but down's output product and the last add,
    /// whose results no backward reads. `None` for `all`, a test of the replay mechanism whose replays
    /// reach across layers and are not modelled here.
    fn replayed(&self, policy: Policy) -> Option<u64> {
        match policy {
            Policy::KeepAll => Some(0),
            Policy::ColaM => {
                Some(self.norms + self.silu + self.qkv_gate_up + self.rope + self.attention + self.gated)
            }
            Policy::Block => Some(self.total() - self.down_out - self.adds / 2),
            Policy::RecomputeAll => None,
        }
    }

    /// Backward: products `4 m k n` (both operand gradients), norms 9, SiLU 9, RoPE 3 per element,
    /// attention 5 products per pair, the gated product 11 (SiLU) or 2, adds 1 per input; and 1 per
    /// element where a value's gradients from several readers are summed: `5 d` (x: its norm and the
    /// residual add; the first norm's output: q, k, v; h: its norm and add; the second norm's output:
    /// gate and up).
    fn backward(&self, dims: &Dims, batch: Batch) -> u64 {
        let gated = if dims.gate_silu { 11 } else { 2 } * dims.f * batch.tokens();
        let sums = 5 * dims.d * batch.tokens();
        2 * self.products()
            + self.norms * 9 / 4
            + self.silu * 9 / 4
            + self.rope
            + self.attention * 5 / 2
            + gated
            + 2 * self.adds
            + sums
    }
}

/// FLOPs the profiler counts for one recorded step of `batch` (the tape's `loss` then `backward`) under
/// `policy`; `None` for `all` (see `LayerForward::replayed`).
pub fn counted(dims: &Dims, batch: Batch, policy: Policy) -> Option<Counted> {
    let Dims { d, vocab: v, layers: l, .. } = *dims;
    let t = batch.tokens();
    let rows = batch.predicting();
    let layer = LayerForward::new(dims, batch);
    Some(Counted {
        model_forward: l * layer.total() + 4 * t * d + rows * (2 * d * v + 4 * v),
        head_gradients: rows * (4 * d * v + 5 * v),
        backward: l * layer.backward(dims, batch) + 9 * t * d + t * d,
        recompute: l * layer.replayed(policy)?,
    })
}

/// One term of a decoder layer's saved values: what the model marks it as, and its values per token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotTerm {
    pub kind: SlotKind,
    pub text: &'static str,
    /// What the values are.
    pub what: &'static str,
    pub values: u64,
}

/// The values per token a decoder layer holds for backward when nothing is recomputed, by slot kind.
pub fn layer_slots(dims: &Dims) -> Vec<SlotTerm> {
    let Dims { d, f, .. } = *dims;
    let mut out = vec![
        SlotTerm { kind: SlotKind::LayerInput, text: "d", what: "the layer's input x", values: d },
        SlotTerm { kind: SlotKind::Residual, text: "d", what: "h = x + attention", values: d },
    ];
    if let Some(r) = dims.r {
        out.push(SlotTerm {
            kind: SlotKind::LowRankPreActivation,
            text: "7 r",
            what: "the seven x @ A",
            values: 7 * r,
        });
        out.push(SlotTerm {
            kind: SlotKind::LowRankCode,
            text: "7 r",
            what: "the seven codes silu(x @ A)",
            values: 7 * r,
        });
    }
    out.push(SlotTerm {
        kind: SlotKind::Other,
        text: "6 d + 3 f",
        what: "two norm outputs, q and k after RoPE, v, the attention output; gate, up, their product",
        values: 6 * d + 3 * f,
    });
    out
}

/// Values per token per layer that survive to backward under `policy`: the terms of [`layer_slots`] the
/// policy keeps inside a layer ([`Policy::retention`], the rule the tape applies).
pub fn saved_layer_values(dims: &Dims, policy: Policy) -> u64 {
    layer_slots(dims)
        .iter()
        .filter(|term| policy.retention(term.kind, true) == Retention::Keep)
        .map(|term| term.values)
        .sum()
}

/// Text of [`saved_outside_values`].
pub const SAVED_OUTSIDE_TEXT: &str = "T d + b (n - 1) d";

/// Values outside the layers, over the micro-batch: the last layer's output (the final norm reads it)
/// and the gradient the fused head formed in forward for its `b (n - 1)` predicting rows.
pub fn saved_outside_values(dims: &Dims, batch: Batch) -> u64 {
    batch.tokens() * dims.d + batch.predicting() * dims.d
}

/// Saved activation bytes of a micro-batch under `policy`, every value `elem` bytes:
/// `elem (L T layer + outside)`.
pub fn saved_bytes(dims: &Dims, batch: Batch, policy: Policy, elem: u64) -> u64 {
    let layer = saved_layer_values(dims, policy);
    elem * (dims.layers * batch.tokens() * layer + saved_outside_values(dims, batch))
}

/// What the GPU's flash attention (head_dim 64 or 128) adds per token and layer under `none`: the per-row
/// log-sum-exp, one f32 per head, `4 h` bytes (the CPU kernel saves none).
pub fn flash_lse_bytes_per_token_layer(dims: &Dims) -> u64 {
    4 * dims.heads
}

/// Saved activation bytes of a micro-batch in bf16 on a GPU: [`saved_bytes`] with 2-byte values, plus
/// flash attention's log-sum-exp under `none` when it runs (`flash`: head_dim 64 or 128).
pub fn gpu_saved_bytes(dims: &Dims, batch: Batch, policy: Policy, flash: bool) -> u64 {
    let lse = if flash && policy == Policy::KeepAll {
        flash_lse_bytes_per_token_layer(dims) * dims.layers * batch.tokens()
    } else {
        0
    };
    saved_bytes(dims, batch, policy, 2) + lse
}

/// How the profiler's model forward differs from METHOD section 8's forward (`--audit`), over a
/// micro-batch: `audit + attention + head_rows + loss + other_ops = model_forward` of [`counted`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconciliation {
    /// Causal attention visits `(n + 1) / 2` keys per query on average, not n: `-L (4 n d T - b A)`.
    pub attention: i128,
    /// The head runs on the `b (n - 1)` predicting positions, not all T: `-2 d V b`.
    pub head_rows: i128,
    /// The loss over the logits: `4 V b (n - 1)`.
    pub loss: i128,
    /// What the formula leaves out: norms, RoPE, adds, SiLUs, the gated product, the final norm:
    /// `L T (16 d + s + g f) + 4 T d`.
    pub other_ops: i128,
}

impl Reconciliation {
    pub fn sum(&self) -> i128 {
        self.attention + self.head_rows + self.loss + self.other_ops
    }
}

pub fn reconcile(dims: &Dims, batch: Batch) -> Reconciliation {
    let Dims { d, f, layers: l, vocab: v, .. } = *dims;
    let t = batch.tokens();
    let attention = l * (4 * batch.n * d * t - 4 * d * batch.causal_pairs());
    let silu = dims.r.map_or(0, |r| 28 * r);
    let gated = if dims.gate_silu { 5 } else { 1 } * f;
    Reconciliation {
        attention: -(attention as i128),
        head_rows: -((2 * d * v * batch.b) as i128),
        loss: (4 * v * batch.predicting()) as i128,
        other_ops: (l * t * (16 * d + silu + gated) + 4 * t * d) as i128,
    }
}

//! A tiny one-layer CoLA decoder written directly with tape ops, for whole-network gradient tests.
//!
//! tokens -> embedding (pad id 0) -> [pre-norm block: rmsnorm -> CoLA q, k, v -> rope(q, k) -> causal
//! attention -> CoLA o -> residual; rmsnorm -> gated MLP `gate(x) * up(x)` of CoLA layers -> CoLA down ->
//! residual] -> final rmsnorm -> dense head -> cross-entropy with targets equal to the pad id ignored.
//! A CoLA projection is `silu(x @ A) @ B` with `A: [in, rank]`, `B: [rank, out]`.
use super::{tensor, Dist};
use cola::autograd::Graph;
use cola::autograd::{Parameter, Result, SlotKind, Tape, Var};
use cola::tensor::{DType, Rng};

pub const PAD_ID: u32 = 0;

#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub batch: usize,
    pub seq: usize,
    pub vocab: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub rank: usize,
    pub ffn_dim: usize,
    /// Apply a SiLU to the gate branch of the MLP (the 60m/130m presets) or not (350m and up).
    pub gate_silu: bool,
    pub rope_theta: f64,
    pub eps: f64,
}

impl Config {
    pub fn tiny(gate_silu: bool) -> Config {
        Config {
            batch: 2,
            seq: 4,
            vocab: 7,
            d_model: 8,
            n_heads: 2,
            rank: 3,
            ffn_dim: 10,
            gate_silu,
            rope_theta: 10000.0,
            eps: 1e-6,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }
}

/// Token ids `[batch, seq]` (pad id 0 anywhere, also mid-sequence) and next-token targets (0 = ignored).
#[derive(Clone, Debug)]
pub struct Batch {
    pub ids: Vec<u32>,
    pub targets: Vec<u32>,
}

impl Batch {
    pub fn random(config: &Config, rng: &mut Rng) -> Batch {
        let n = config.batch * config.seq;
        let id = |rng: &mut Rng| {
            // About one in four positions is padding.
            if rng.below(4) == 0 {
                PAD_ID
            } else {
                1 + rng.below(config.vocab as u64 - 1) as u32
            }
        };
        let mut ids: Vec<u32> = (0..n).map(|_| id(rng)).collect();
        let mut targets: Vec<u32> = (0..n).map(|_| id(rng)).collect();
        // At least one pad input and one ignored target, and one target that counts.
        ids[1] = PAD_ID;
        targets[0] = PAD_ID;
        targets[n - 1] = 1;
        Batch { ids, targets }
    }
}

/// The parameters, in the order `TinyCola::loss_with` expects their vars.
pub struct TinyCola {
    pub config: Config,
    pub params: Vec<Parameter>,
}

impl TinyCola {
    pub fn new(config: Config, dtype: DType, rng: &mut Rng) -> TinyCola {
        let (d, r, f, v) = (config.d_model, config.rank, config.ffn_dim, config.vocab);
        let mut params = Vec::new();
        let mut add = |name: &str, shape: &[usize], dist: Dist, rng: &mut Rng| {
            let mut value = tensor(shape, dist, rng);
            if name.ends_with("norm") {
                value = value.add_scalar(1.0).expect("affine");
            }
            params.push(Parameter::new(name, value.to_dtype(dtype).expect("cast")));
        };
        // Larger than the paper's init, so that every parameter gets a gradient well above the tolerance.
        let w = Dist::Normal(0.5);
        let norm = Dist::Normal(0.2);
        add("embed", &[v, d], Dist::Normal(1.0), rng);
        add("attn_norm", &[d], norm, rng);
        for name in ["q", "k", "v", "o"] {
            add(&format!("{name}_a"), &[d, r], w, rng);
            add(&format!("{name}_b"), &[r, d], w, rng);
        }
        add("mlp_norm", &[d], norm, rng);
        for name in ["gate", "up"] {
            add(&format!("{name}_a"), &[d, r], w, rng);
            add(&format!("{name}_b"), &[r, f], w, rng);
        }
        add("down_a", &[f, r], w, rng);
        add("down_b", &[r, d], w, rng);
        add("final_norm", &[d], norm, rng);
        add("head", &[d, v], w, rng);
        TinyCola { config, params }
    }

    /// Records every parameter on `tape` and the loss of `batch`.
    pub fn loss(&self, tape: &mut Tape, batch: &Batch) -> Result<Var> {
        let vars: Vec<Var> = self.params.iter().map(|p| tape.param(p)).collect();
        self.loss_with(tape, &vars, batch)
    }

    /// The loss of `batch` given the parameter vars (recorded once, shareable between several losses).
    pub fn loss_with(&self, tape: &mut Tape, p: &[Var], batch: &Batch) -> Result<Var> {
        let &[embed, attn_norm, q_a, q_b, k_a, k_b, v_a, v_b, o_a, o_b, mlp_norm] = &p[..11] else {
            panic!("TinyCola has 19 parameters, got {} vars", p.len());
        };
        let &[gate_a, gate_b, up_a, up_b, down_a, down_b, final_norm, head] = &p[11..] else {
            panic!("TinyCola has 19 parameters, got {} vars", p.len());
        };
        let c = self.config;
        let (b, s, d, h, hd) = (c.batch, c.seq, c.d_model, c.n_heads, c.head_dim());
        let positions: Vec<u32> = (0..s as u32).collect();

        let x = tape.embedding(&embed, &batch.ids, &[b, s], Some(PAD_ID))?;
        tape.mark(x, SlotKind::LayerInput)?;
        let n = tape.rms_norm(&x, &attn_norm, c.eps)?;
        let q = cola_linear(tape, n, q_a, q_b)?;
        let k = cola_linear(tape, n, k_a, k_b)?;
        let v = cola_linear(tape, n, v_a, v_b)?;
        let q = tape.reshape(&q, &[b, s, h, hd])?;
        let k = tape.reshape(&k, &[b, s, h, hd])?;
        let v = tape.reshape(&v, &[b, s, h, hd])?;
        let q = tape.rope(&q, &positions, c.rope_theta)?;
        let k = tape.rope(&k, &positions, c.rope_theta)?;
        let attn = tape.attention(&q, &k, &v, 1.0 / (hd as f64).sqrt())?;
        let attn = tape.reshape(&attn, &[b, s, d])?;
        let o = cola_linear(tape, attn, o_a, o_b)?;
        let x = tape.add(&x, &o)?;
        tape.mark(x, SlotKind::Residual)?;

        let n = tape.rms_norm(&x, &mlp_norm, c.eps)?;
        let mut gate = cola_linear(tape, n, gate_a, gate_b)?;
        if c.gate_silu {
            gate = tape.silu(&gate)?;
        }
        let up = cola_linear(tape, n, up_a, up_b)?;
        let m = tape.mul(&gate, &up)?;
        let down = cola_linear(tape, m, down_a, down_b)?;
        let x = tape.add(&x, &down)?;

        let x = tape.rms_norm(&x, &final_norm, c.eps)?;
        let logits = tape.matmul(&x, &head)?;
        tape.cross_entropy(&logits, &batch.targets, Some(PAD_ID))
    }
}

/// `silu(x @ a) @ b`, with the rank-r pre-activation and code marked for retention policies.
pub fn cola_linear(tape: &mut Tape, x: Var, a: Var, b: Var) -> Result<Var> {
    let pre = tape.matmul(&x, &a)?;
    tape.mark(pre, SlotKind::LowRankPreActivation)?;
    let code = tape.silu(&pre)?;
    tape.mark(code, SlotKind::LowRankCode)?;
    tape.matmul(&code, &b)
}

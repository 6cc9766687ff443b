#!/usr/bin/env python3
"""An independent PyTorch implementation of LLaMA-CoLA that writes the parity fixtures.

The model is written from the method description (docs/METHOD.md: sections 1-3 for the model, 6 for the
training recipe) in plain PyTorch, in the style of the reference implementation (Hugging Face LLaMA with
CoLA layers), and shares no code with the Rust stack. It reads the project's preset table, which
`examples/parity_export.rs` writes to FIXTURE_DIR/presets.json (shapes only: the sizes are data, checked
against the paper by the Rust tests; what is independent here is the model built from them), and for each
variant folder that the exporter wrote under FIXTURE_DIR:

    model.safetensors   initial weights (f64) under the reference's names and layouts
    batch.json          the config, a token batch, ten training batches and the training settings

and writes, for f64 and for f32 (the same weights rounded to f32):

    reference-f64.safetensors / reference-f32.safetensors
        logits          [rows, seq, vocab] of the token batch
        loss            [1] mean next-token cross-entropy over the targets that are not the pad id
        grad.<name>     gradient of that loss for every parameter (on-disk layout: dense [out, in])
        train.loss      [steps] loss of each training batch before its update
        train.grad_norm [steps] global gradient norm before clipping
        train.lr        [steps] learning rate of each update (f64 in both files)
        final.<name>    every parameter after the updates (AdamW, clipping, warmup + cosine)

and, for bf16 (`model.to(torch.bfloat16)`, the pure-bf16 setting: every parameter and activation stored
in bf16; matmuls accumulate in f32 and round their result once, norms and the attention softmax run in f32
inside (`compute_dtype`) and round on the way out, the loss runs in f32 on the bf16 logits):

    reference-bf16.safetensors
        logits          [rows, seq, vocab] of the token batch, stored as bf16 (the model's dtype)
        loss            [1] the same loss, stored as f32 (the dtype it is computed in)
        grad.<name>     gradient of that loss for every parameter, stored as bf16 (the parameters' dtype)

There is no bf16 training trajectory: PyTorch's AdamW on bf16 parameters computes each update in bf16
arithmetic (every intermediate rounded), not in f32 rounded once as the Rust stack's pure-bf16 mode does, so
the two trajectories would differ by their optimizer arithmetic rather than by the model. PyTorch converts
the f64 weights to bf16 through f32 (as the Rust loader does); `main` checks that this gives the same bits
as rounding the f32 weights, so the bf16 weights are exactly the f32 fixture's weights rounded to bf16.

It also builds every preset on the meta device and writes their parameter counts to
FIXTURE_DIR/param_counts.json. Everything runs on one CPU thread with deterministic algorithms, so a rerun
writes the same bytes.

`bench_torch_gpu.py` imports this model to time it (on a GPU, under autocast, with `fused_attention`
putting PyTorch's scaled_dot_product_attention in place of the explicit softmax); the thread and
determinism settings are this program's, made in `main`, not on import.

Usage: parity.py FIXTURE_DIR   (normally through scripts/reference/run.sh)
"""
import functools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

# Paper constants (docs/METHOD.md sections 3 and 6).
ROPE_THETA = 10000.0
NORM_EPS = 1e-6
PAD_ID = 0
BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
MIN_LR_RATIO = 0.1
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Config:
    vocab_size: int
    d_model: int
    ffn_dim: int
    n_layers: int
    n_heads: int
    rank: Optional[int]  # None: dense projections (the full-rank baseline)
    only_lr_act: bool  # True: the MLP's own gate SiLU is dropped
    max_seq_len: int = 256
    # True: attention through F.scaled_dot_product_attention (fused kernels; the benchmark's setting),
    # False: the explicit masked softmax the fixtures are computed with.
    fused_attention: bool = False

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def config_of_checkpoint(folder: Path) -> Config:
    """The Config of a checkpoint folder written by the Rust stack, from its Hugging Face style
    `config.json` (the names `ColaForCausalLM` uses: `hidden_size`, `cola_rank`, `only_lr_act`, ...)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise SystemExit(f"no {path}: pass --preset, or a checkpoint folder the training program wrote")
    c = json.loads(path.read_text())
    if (c["rope_theta"], c["rms_norm_eps"], c["pad_token_id"]) != (ROPE_THETA, NORM_EPS, PAD_ID):
        raise SystemExit(f"{path}: other constants than this reference's: {c}")
    if c.get("cola_rank") is not None and c.get("lr_act_type", "silu") != "silu":
        raise SystemExit(f"{path}: this reference applies silu between the factors, not {c['lr_act_type']}")
    return Config(
        vocab_size=c["vocab_size"],
        d_model=c["hidden_size"],
        ffn_dim=c["intermediate_size"],
        n_layers=c["num_hidden_layers"],
        n_heads=c["num_attention_heads"],
        rank=c.get("cola_rank"),
        only_lr_act=bool(c.get("only_lr_act", False)),
        max_seq_len=c["max_position_embeddings"],
    )


def load_presets(root: Path) -> dict:
    """Every preset of FIXTURE_DIR/presets.json as a Config, in the exporter's order.

    Each entry is `{"preset": name, "config": {...}}` with the config in batch.json's form; the constants
    this reference hard-codes (RoPE theta, norm eps, pad id) must agree with it.
    """
    path = root / "presets.json"
    if not path.is_file():
        raise SystemExit(f"no {path}: run examples/parity_export.rs first")
    presets = {}
    for entry in json.loads(path.read_text()):
        c = entry["config"]
        if (c["rope_theta"], c["norm_eps"], c["pad_id"]) != (ROPE_THETA, NORM_EPS, PAD_ID):
            raise SystemExit(f"{path}: {entry['preset']} has other constants than this reference: {c}")
        presets[entry["preset"]] = Config(
            vocab_size=c["vocab_size"],
            d_model=c["d_model"],
            ffn_dim=c["ffn_dim"],
            n_layers=c["n_layers"],
            n_heads=c["n_heads"],
            rank=c["rank"],
            only_lr_act=not c["mlp_gate_silu"],
            max_seq_len=c["max_seq_len"],
        )
    return presets


class CoLALinear(nn.Module):
    """y = silu(x @ A) @ B with A: (in, r), B: (r, out); no bias."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.cola_a = nn.Parameter(torch.empty(in_features, rank))
        self.cola_b = nn.Parameter(torch.empty(rank, out_features))

    def forward(self, x):
        return F.silu(x @ self.cola_a) @ self.cola_b


def projection(cfg: Config, in_features: int, out_features: int) -> nn.Module:
    if cfg.rank is None:
        return nn.Linear(in_features, out_features, bias=False)
    return CoLALinear(in_features, out_features, cfg.rank)


def compute_dtype(dtype):
    """Norms and softmax run in fp32, or in the model's dtype when it is wider."""
    return torch.promote_types(dtype, torch.float32)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = NORM_EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        h = x.to(compute_dtype(x.dtype))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@functools.lru_cache(maxsize=16)
def rope_cos_sin(seq_len: int, head_dim: int, dtype, device=None):
    """cos and sin of position * theta^(-2i/head_dim), pair i = dims (i, i + head_dim/2); angles in f64.

    Constants of the shapes, so they are computed once per shape, dtype and device.
    """
    inv_freq = ROPE_THETA ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)
    angles = torch.arange(seq_len, dtype=torch.float64, device=device)[:, None] * inv_freq[None, :]
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.fused_attention = cfg.fused_attention
        self.q_proj = projection(cfg, cfg.d_model, cfg.d_model)
        self.k_proj = projection(cfg, cfg.d_model, cfg.d_model)
        self.v_proj = projection(cfg, cfg.d_model, cfg.d_model)
        self.o_proj = projection(cfg, cfg.d_model, cfg.d_model)

    def rope_qkv(self, x):
        """q and k after RoPE, and v, each [b, heads, t, head_dim]."""
        b, t, _ = x.shape

        def heads(y):  # [b, t, d] -> [b, heads, t, head_dim]
            return y.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        # In the projections' dtype: the model's, or bf16 under autocast.
        cos, sin = rope_cos_sin(t, self.head_dim, q.dtype, q.device)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.rope_qkv(x)
        if self.fused_attention:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(causal, float("-inf"))
            probs = F.softmax(scores.to(compute_dtype(x.dtype)), dim=-1).to(x.dtype)
            out = probs @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.only_lr_act = cfg.only_lr_act
        self.gate_proj = projection(cfg, cfg.d_model, cfg.ffn_dim)
        self.up_proj = projection(cfg, cfg.d_model, cfg.ffn_dim)
        self.down_proj = projection(cfg, cfg.ffn_dim, cfg.d_model)

    def forward(self, x):
        gate = self.gate_proj(x)
        if not self.only_lr_act:
            gate = F.silu(gate)
        return self.down_proj(gate * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x):
        h = x + self.self_attn(self.input_layernorm(x))
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=PAD_ID)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)

    def forward(self, ids):
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, ids):
        return self.lm_head(self.model(ids))

    def loss(self, ids):
        """Labels are the inputs with pad positions ignored, shifted by one inside the model."""
        logits = self(ids)
        labels = ids.masked_fill(ids == PAD_ID, IGNORE_INDEX)
        # In f32 for bf16 logits (as the Rust stack's loss); unchanged in f32 and f64.
        shift_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1]).to(compute_dtype(logits.dtype))
        shift_labels = labels[:, 1:].reshape(-1)
        return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)


def param_counts(cfg: Config) -> dict:
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    total = sum(p.numel() for p in model.parameters())
    low_rank = sum(p.numel() for n, p in model.named_parameters() if n.endswith(("cola_a", "cola_b")))
    return {"total": total, "low_rank": low_rank, "other": total - low_rank}


def lr_factor(step: int, warmup: int, total: int) -> float:
    """docs/METHOD.md section 6: linear warmup from 0, cosine decay to 10% of the peak."""
    if step < warmup:
        return step / warmup
    progress = min((step - warmup) / (total - warmup), 1.0) if total > warmup else 1.0
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))


def load_model(cfg: Config, weights: dict, dtype) -> LlamaForCausalLM:
    model = LlamaForCausalLM(cfg).to(dtype)
    model.load_state_dict({name: w.to(dtype) for name, w in weights.items()}, strict=True)
    return model


def token_tensor(tokens, rows: int, seq: int):
    return torch.tensor(tokens, dtype=torch.long).view(rows, seq)


def reference(cfg: Config, weights: dict, spec: dict, dtype, trajectory: bool) -> dict:
    """Logits, loss and gradients of the token batch; with `trajectory`, also the ten training updates."""
    rows, seq = spec["rows"], spec["seq_len"]
    out = {}

    model = load_model(cfg, weights, dtype)
    ids = token_tensor(spec["tokens"], rows, seq)
    with torch.no_grad():
        out["logits"] = model(ids)
    loss = model.loss(ids)
    loss.backward()
    out["loss"] = loss.detach().reshape(1)
    for name, p in model.named_parameters():
        out[f"grad.{name}"] = p.grad

    if not trajectory:
        return {name: t.detach().contiguous() for name, t in out.items()}

    train = spec["train"]
    model = load_model(cfg, weights, dtype)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(
        params,
        lr=train["peak_lr"],
        betas=BETAS,
        eps=ADAM_EPS,
        weight_decay=train["weight_decay"],
        foreach=False,
    )
    warmup, total = train["warmup_steps"], train["total_steps"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total))
    losses, norms, lrs = [], [], []
    for tokens in train["batches"]:
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(token_tensor(tokens, rows, seq))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, train["clip_norm"], foreach=False)
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        norms.append(norm.item())
    out["train.loss"] = torch.tensor(losses, dtype=dtype)
    out["train.grad_norm"] = torch.tensor(norms, dtype=dtype)
    out["train.lr"] = torch.tensor(lrs, dtype=torch.float64)
    for name, p in model.named_parameters():
        out[f"final.{name}"] = p.detach()
    return {name: t.detach().contiguous() for name, t in out.items()}


def check_config(cfg: Config, exported: dict, variant: str):
    expected = {
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "ffn_dim": cfg.ffn_dim,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "rank": cfg.rank,
        "mlp_gate_silu": not cfg.only_lr_act,
        "rope_theta": ROPE_THETA,
        "norm_eps": NORM_EPS,
        "max_seq_len": cfg.max_seq_len,
        "pad_id": PAD_ID,
    }
    if expected != exported:
        raise SystemExit(f"{variant}: exported config {exported} differs from this reference's {expected}")


def main():
    if len(sys.argv) != 2:
        raise SystemExit("usage: parity.py FIXTURE_DIR")
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    root = Path(sys.argv[1])

    presets = load_presets(root)
    counts = {name: param_counts(cfg) for name, cfg in presets.items()}
    print(f"{'preset':<10} {'total':>14} {'low-rank':>14} {'other':>14}")
    for name, c in counts.items():
        print(f"{name:<10} {c['total']:>14,} {c['low_rank']:>14,} {c['other']:>14,}")
    (root / "param_counts.json").write_text(json.dumps(counts, indent=2) + "\n")

    variants = sorted(p.parent for p in root.glob("*/batch.json"))
    if not variants:
        raise SystemExit(f"no */batch.json under {root}: run examples/parity_export.rs first")
    for folder in variants:
        spec = json.loads((folder / "batch.json").read_text())
        cfg = presets[spec["preset"]]
        if not spec["config"]["mlp_gate_silu"]:
            cfg = Config(**{**cfg.__dict__, "only_lr_act": True})
        check_config(cfg, spec["config"], folder.name)
        weights = load_file(str(folder / "model.safetensors"))
        for name, w in weights.items():
            direct, via_f32 = w.to(torch.bfloat16), w.to(torch.float32).to(torch.bfloat16)
            if not torch.equal(direct.view(torch.int16), via_f32.view(torch.int16)):
                raise SystemExit(f"{folder.name}: {name} rounds to other bf16 values than its f32 rounding")
        for dtype, tag in ((torch.float64, "f64"), (torch.float32, "f32"), (torch.bfloat16, "bf16")):
            trajectory = dtype != torch.bfloat16
            tensors = reference(cfg, weights, spec, dtype, trajectory)
            # One metadata entry: the writer orders several at random, which would change the bytes.
            save_file(tensors, str(folder / f"reference-{tag}.safetensors"), metadata={"format": "pt"})
            line = f"{folder.name} {tag}: loss {tensors['loss'].item():.10f}"
            if trajectory:
                losses = ", ".join(f"{v:.6f}" for v in tensors["train.loss"].tolist())
                line += f"; training losses {losses}"
            print(line)


if __name__ == "__main__":
    main()

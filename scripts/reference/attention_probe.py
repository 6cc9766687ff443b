#!/usr/bin/env python3
"""What a checkpoint's attention looks like, and how exact its gradients are in each precision.

Runs the independent PyTorch model of parity.py (no code shared with the Rust stack) on one batch of
8 x 256 tokens: the first 2048 ids of a token-shard file (`*.ids`, little-endian u16, as the training
program's cache writes them for a vocabulary below 65536).

For every checkpoint (a `model.safetensors`, in the layout the Rust stack saves and parity.py loads) it
prints, per layer, in f64:
    |q|, |k|      mean norm of a head's query and key rows after RoPE
    max|s|        the largest attention score s = q.k / sqrt(head_dim) of the batch (causal keys only)
    p             the mean over query rows of the row's largest softmax probability (1: one-hot)
so that attention-logit growth (scores of hundreds or thousands, p near 1) can be read off.

With --gradients it also computes the loss gradient of every parameter in f64 (explicit softmax) and, in
the same run, in f32, in pure bf16 (`model.to(torch.bfloat16)`) and under bf16 autocast, the last three
with F.scaled_dot_product_attention (PyTorch's fused CPU kernel), and prints each one's error against f64:
    global        ||g - g64|| / ||g64|| over all parameters together
    worst         the parameter with the largest ||g - g64|| / ||g64||, and that ratio
    per group     the same ratio for the attention q and k factors of each layer (the most sensitive) and
                  for the embedding

Usage: attention_probe.py [--gradients] [--preset NAME] IDS_FILE CHECKPOINT/model.safetensors...

Without --preset each checkpoint's shape comes from the `config.json` beside its `model.safetensors`.
"""
import argparse
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parity  # noqa: E402

ROWS, SEQ = 8, 256
FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "parity"


def token_batch(path: str) -> torch.Tensor:
    ids = np.fromfile(path, dtype="<u2")
    if ids.size < ROWS * SEQ:
        raise SystemExit(f"{path}: {ids.size} token ids, need {ROWS * SEQ}")
    return torch.tensor(ids[: ROWS * SEQ].astype(np.int64)).view(ROWS, SEQ)


def attention_stats(model: parity.LlamaForCausalLM, ids: torch.Tensor):
    """(loss, per layer (|q|, |k|, max|s|, p)) of the f64 model on the batch."""
    stats = []

    def hook(attn, inputs, _output):
        q, k, _ = attn.rope_qkv(inputs[0])
        t = q.shape[2]
        causal = torch.ones(t, t, dtype=torch.bool).triu(1)
        s = ((q @ k.transpose(-1, -2)) / math.sqrt(attn.head_dim)).masked_fill(causal, float("-inf"))
        p = torch.softmax(s, dim=-1)
        stats.append(
            (
                q.norm(dim=-1).mean().item(),
                k.norm(dim=-1).mean().item(),
                s.masked_fill(causal, 0.0).abs().amax().item(),
                p.amax(dim=-1).mean().item(),
            )
        )

    handles = [layer.self_attn.register_forward_hook(hook) for layer in model.model.layers]
    with torch.no_grad():
        loss = model.loss(ids).item()
    for h in handles:
        h.remove()
    return loss, stats


def gradients(cfg, weights, ids, dtype, autocast=False, fused=True):
    model = parity.load_model(dataclasses.replace(cfg, fused_attention=fused), weights, dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model.loss(ids)
    loss.backward()
    return loss.item(), {n: p.grad.double() for n, p in model.named_parameters()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ids_file")
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--preset", help="a preset of the parity fixtures [default: each checkpoint's config.json]")
    ap.add_argument("--gradients", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    preset = parity.load_presets(FIXTURES)[args.preset] if args.preset else None
    ids = token_batch(args.ids_file)
    for path in args.checkpoints:
        cfg = preset or parity.config_of_checkpoint(Path(path).parent)
        weights = load_file(path)
        loss, stats = attention_stats(parity.load_model(cfg, weights, torch.float64), ids)
        print(f"{path}: f64 loss {loss:.4f}")
        for i, (q, k, s, p) in enumerate(stats):
            print(f"  layer {i}: |q| {q:7.1f}  |k| {k:7.1f}  max|s| {s:9.1f}  p {p:.3f}")
        if not args.gradients:
            continue
        loss64, g64 = gradients(cfg, weights, ids, torch.float64, fused=False)
        variants = [
            ("f32, SDPA", dict(dtype=torch.float32)),
            ("pure bf16, SDPA", dict(dtype=torch.bfloat16)),
            ("bf16 autocast, SDPA", dict(dtype=torch.float32, autocast=True)),
        ]
        for name, kw in variants:
            loss_v, g = gradients(cfg, weights, ids, **kw)
            rel = {n: ((g[n] - g64[n]).norm() / g64[n].norm()).item() for n in g64}
            total = math.sqrt(sum(((g[n] - g64[n]) ** 2).sum().item() for n in g64))
            norm = math.sqrt(sum((g64[n] ** 2).sum().item() for n in g64))
            worst = max(rel, key=rel.get)
            print(f"  {name}: loss {loss_v:.6f} (f64 {loss64:.6f}); gradient error: global {total / norm:.3e}, "
                  f"worst {worst} {rel[worst]:.3e}")
            qk = [max(e for n, e in rel.items() if f"layers.{i}.self_attn.q_proj" in n
                      or f"layers.{i}.self_attn.k_proj" in n) for i in range(cfg.n_layers)]
            print(f"    embedding {rel['model.embed_tokens.weight']:.3e}; q,k factors per layer (max): "
                  + " ".join(f"{e:.2e}" for e in qk))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

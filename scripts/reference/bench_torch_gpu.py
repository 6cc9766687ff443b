#!/usr/bin/env python3
"""Training throughput, MFU and peak memory of the independent PyTorch model (parity.py), side by side
with `examples/bench_gpu.rs`: the same rows, settings and FLOPs count, so the two JSON files join into
one table (scripts/bench_gpu_table.py).

Per row (`--rows full-350m,cola-350m,cola-350m:cola-m,...`; `PRESET[:POLICY]`): parity.py's model with
zero weights on a GPU (values do not change a GPU kernel's time) and N(0, 0.02) matrices with unit norm
weights on the CPU (zero weights become tiny after the first update, their activations subnormal, and a
CPU computes subnormals on a slow path, which slowed whole steps by an order of magnitude), `--warmup` untimed and `--steps` timed optimizer
steps of one micro-batch of random token ids each: forward, backward, gradient clipping at 0.5, AdamW
(fused where PyTorch has it). tokens/s counts input tokens; MFU = tokens/s x training FLOPs per token
(docs/METHOD.md section 8, `cola::audit::flops_per_token`: 3 x forward, recomputation not counted) /
`--peak-tflops`. Peak memory is torch.cuda.max_memory_allocated over the timed steps. A micro-batch that
does not fit is retried with half of it, as ours is.

What PyTorch runs, against our bf16-mixed (bf16 weights and activations, f32 accumulation, f32 master
weights and AdamW moments): autocast to bf16 over f32 parameters, PyTorch's own mixed precision, where the
f32 parameters are the master weights and autocast makes their bf16 copies once per step; attention
through F.scaled_dot_product_attention(is_causal=True) restricted to the flash backend when a probe shows
it runs (else PyTorch's own choice, said in the output); `--compile` adds torch.compile (a failure is
reported and the row runs eagerly). Policies: `cola-m` is CoLA-M (docs/METHOD.md section 7) as selective
activation checkpointing of every decoder layer: the layer input, the post-attention residual and the
rank-r codes silu(x @ A) are saved, everything else is recomputed in backward, as our `cola-m` policy does;
`block` checkpoints each layer whole.

Against our pure-bf16 (bf16 weights and AdamW moments, no f32 master copy: the paper's setting), `pure-bf16`
converts the model to bf16 before the optimizer is made, so AdamW keeps its moments in the parameters'
dtype; norms and softmax still run in f32 inside parity.py, as ours do.

`--match FILE` takes seq, steps, warmup, precision and each row's micro-batch from our bench_gpu JSON, so
both sides time the same work. `--device cpu` has no peak memory and defaults to f32; it runs every
precision (autocast on the CPU is oneDNN's bf16), with `--threads N` intra-op threads, and each row then
also lists every timed step's seconds (`step_s_each`) so that a caller can take medians over several runs
(`scripts/bench_cpu_vs_torch.sh` puts it next to our training program).

Usage: bench_torch_gpu.py [--rows ...] [--steps 5] [--warmup 2] [--seq 256] [--micro-batch N]
       [--precision bf16-mixed|pure-bf16|f32] [--peak-tflops 989] [--device cuda] [--threads N] [--compile]
       [--match OURS.json]
       [--json FILE] [--presets tests/fixtures/parity/presets.json] [--check-policies cola-60m]
"""
import argparse
import contextlib
import gc
import json
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parity  # noqa: E402  (the model, from the same folder)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROWS = "full-350m,cola-350m,cola-350m:cola-m,full-1b,cola-1b,cola-1b:cola-m"
# The same settings as examples/bench_gpu.rs's trainer (the values change no kernel's time).
LR, WEIGHT_DECAY, CLIP_NORM = 1e-3, 0.01, 0.5
# nn/src/preset.rs's gpu_micro_batch, by size, for runs without --match or --micro-batch.
GPU_MICRO_BATCH = {"tiny": 64, "60m": 64, "130m": 64, "350m": 64, "1b": 32, "7b": 8}


def flops_per_token(cfg: parity.Config, seq_len: int) -> dict:
    """docs/METHOD.md section 8, the formula of cola::audit::flops_per_token, in the same order of
    operations (every term is an integer below 2^53, so both programs get the same f64)."""
    d, f, v = float(cfg.d_model), float(cfg.ffn_dim), float(cfg.vocab_size)
    if cfg.rank is not None:
        r = float(cfg.rank)
        projections = 2.0 * (8.0 * r * d + 3.0 * r * (d + f))
    else:
        projections = 2.0 * (4.0 * d * d + 3.0 * d * f)
    attention = 4.0 * seq_len * d
    forward = cfg.n_layers * (projections + attention) + 2.0 * d * v
    return {"forward": forward, "training": 3.0 * forward}


def cola_m_policy(cfg: parity.Config, saved=None):
    """Selective checkpointing that saves what our cola-m policy keeps: the rank-r codes (the output of
    silu on a [..., rank] tensor) and the residual stream (a [batch, seq, d_model] + [batch, seq, d_model]
    sum); the layer input is the checkpoint's own input. `saved`, a list, collects the name of each op
    whose output the forward saves."""

    def policy(ctx, op, *args, **kwargs):
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        code = op is torch.ops.aten.silu.default and first is not None and first.shape[-1] == cfg.rank
        residual = (
            op is torch.ops.aten.add.Tensor
            and first is not None
            and first.dim() == 3
            and first.shape[-1] == cfg.d_model
            and isinstance(args[1], torch.Tensor)
            and args[1].shape == first.shape
        )
        if not (code or residual):
            return CheckpointPolicy.PREFER_RECOMPUTE
        if saved is not None and not ctx.is_recompute:
            saved.append("code" if code else "residual")
        return CheckpointPolicy.MUST_SAVE

    return policy


def apply_policy(model: parity.LlamaForCausalLM, cfg: parity.Config, policy: str, saved=None):
    """Wraps every decoder layer's forward in a checkpoint for `policy` (none leaves the model as is)."""
    if policy == "none":
        return
    if policy == "cola-m" and cfg.rank is None:
        raise ValueError("cola-m needs a CoLA preset (the rank-r codes are what it keeps)")
    if policy not in ("cola-m", "block"):
        raise ValueError(f"unknown policy {policy} (none, cola-m, block)")
    for layer in model.model.layers:
        plain = layer.forward
        if policy == "cola-m":
            context = partial(create_selective_checkpoint_contexts, cola_m_policy(cfg, saved))
            layer.forward = partial(checkpoint, plain, use_reentrant=False, context_fn=context)
        else:
            layer.forward = partial(checkpoint, plain, use_reentrant=False)


def check_policies(cfg: parity.Config, device: torch.device) -> bool:
    """That the checkpointing policies change no number and cola-m saves what it should: the gradients of
    one f32 batch under none, cola-m and block on random weights (two layers of `cfg`) agree within 1e-6
    of their largest magnitude (recomputation replays the same ops on the same inputs, so only a
    different reduction order inside a fused kernel could move them), and the forward of cola-m saves
    per layer 7 codes (q, k, v, o, gate, up, down) and 2 residual sums."""
    cfg = replace(cfg, n_layers=2)
    ids = torch.randint(1, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0)).to(device)
    grads, saved = {}, []
    for policy in ("none", "cola-m", "block"):
        torch.manual_seed(1)
        with torch.device(device):
            model = parity.LlamaForCausalLM(cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.05)
        apply_policy(model, cfg, policy, saved if policy == "cola-m" else None)
        model.loss(ids).backward()
        grads[policy] = torch.cat([p.grad.flatten() for p in model.parameters()])
    scale = grads["none"].abs().max().item()
    worst = max((grads[p] - grads["none"]).abs().max().item() for p in ("cola-m", "block"))
    expected = {"code": 7 * cfg.n_layers, "residual": 2 * cfg.n_layers}
    counted = {kind: saved.count(kind) for kind in expected}
    ok = worst <= 1e-6 * scale and counted == expected
    print(
        f"policy check ({device}): largest gradient difference {worst:.3g} (of {scale:.3g}); cola-m saved "
        f"{counted}, expected {expected}: {'ok' if ok else 'FAILED'}"
    )
    return ok


def flash_available(device: torch.device) -> bool:
    """Whether SDPA's flash backend runs a causal bf16 forward and backward here."""
    if device.type != "cuda":
        return False
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        q = torch.randn(1, 2, 64, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
        return True
    except Exception as error:  # any failure means: let PyTorch choose
        print(f"flash attention unavailable ({type(error).__name__}: {error}); SDPA chooses its backend")
        return False


def attention_context(flash: bool):
    if flash:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION])
    return contextlib.nullcontext()


def run_row(cfg, policy, micro_batch, args, device, flash):
    """One row: returns its measurements (raises torch.cuda.OutOfMemoryError when it does not fit)."""
    with torch.device(device):
        model = parity.LlamaForCausalLM(cfg)
    if args.precision == "pure-bf16":
        model = model.to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if device.type != "cpu":
                p.zero_()
            elif "norm" not in name:
                p.normal_(0.0, 0.02)
    apply_policy(model, cfg, policy)
    params = list(model.parameters())
    try:
        optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
    except (RuntimeError, TypeError) as error:
        print(f"fused AdamW unavailable on {device} ({error}); foreach AdamW")
        optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    loss_of = model.loss
    compiled = False
    if args.compile:
        try:
            loss_of = torch.compile(model.loss)
            compiled = True
        except Exception as error:
            print(f"torch.compile failed ({type(error).__name__}: {error}); eager")
    mixed = args.precision == "bf16-mixed"
    generator = torch.Generator(device=device).manual_seed(0)

    def step():
        ids = torch.randint(1, cfg.vocab_size, (micro_batch, args.seq), device=device, generator=generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed), attention_context(flash):
            loss = loss_of(ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP_NORM, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    loss = None
    for i in range(args.warmup):
        try:
            loss = step()
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as error:
            if not compiled or i > 0:
                raise
            print(f"torch.compile failed in its first step ({type(error).__name__}: {error}); eager")
            loss_of, compiled = model.loss, False
            optimizer.zero_grad(set_to_none=True)
            loss = step()
    synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    each = []
    for _ in range(args.steps):
        began = time.perf_counter()
        loss = step()
        if device.type == "cpu":  # a GPU step is only timed as a whole (no synchronisation inside)
            each.append(time.perf_counter() - began)
    synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    tokens_per_s = micro_batch * args.seq * args.steps / elapsed
    flops = flops_per_token(cfg, args.seq)["training"]
    return {
        "micro_batch": micro_batch,
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops,
        "mfu": tokens_per_s * flops / (args.peak_tflops * 1e12),
        "peak_bytes": peak,
        "step_s": elapsed / args.steps,
        "loss": float(loss.detach()) if loss is not None else None,
        "compiled": compiled,
        "step_s_each": each,
    }


def release(device: torch.device, compiled: bool):
    """Frees what a row held: compiled graphs keep their model's parameters alive until dynamo forgets
    them, and the caching allocator keeps freed blocks until emptied (the next row's peak starts there)."""
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=DEFAULT_ROWS)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--micro-batch", type=int)
    parser.add_argument("--precision", choices=["bf16-mixed", "pure-bf16", "f32"])
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (intra-op threads)")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--match", type=Path, help="our bench_gpu --json file: take its settings")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--presets", type=Path, default=ROOT / "tests/fixtures/parity/presets.json")
    parser.add_argument(
        "--check-policies", metavar="PRESET", help="check the checkpointing policies on PRESET (a CoLA one) and exit"
    )
    args = parser.parse_args(argv)
    args.matched = {}
    if args.match:
        ours = json.loads(args.match.read_text())
        args.seq, args.steps, args.warmup = ours["seq"], ours["steps"], ours["warmup"]
        args.precision = args.precision or ours["precision"]
        args.matched = {row["row"]: row["micro_batch"] for row in ours["rows"]}
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.precision = args.precision or ("bf16-mixed" if device.type == "cuda" else "f32")
    return args, device


def main(argv):
    args, device = parse_args(argv)
    presets = parity.load_presets(args.presets.parent)
    if args.check_policies:
        return 0 if check_policies(replace(presets[args.check_policies], fused_attention=True), device) else 1
    flash = flash_available(device)
    attention = "flash" if flash else "default"
    print(
        f"PyTorch {torch.__version__} training throughput ({device}, {torch.get_num_threads()} threads, "
        f"{args.precision}, seq {args.seq}, "
        f"{args.steps} timed steps after {args.warmup} warmup; SDPA {attention}; "
        f"{'torch.compile' if args.compile else 'eager'}; MFU against {args.peak_tflops} TFLOP/s)"
    )
    print(f"{'model':<22} {'micro':>6} {'tokens/s':>12} {'MFU':>7} {'peak mem':>12} {'step s':>8} {'loss':>8}")
    rows, failed = [], []
    report = {
        "program": "bench_torch_gpu",
        "torch": torch.__version__,
        "device": str(device),
        "precision": args.precision,
        "attention": attention,
        "compile": args.compile,
        "threads": torch.get_num_threads(),
        "seq": args.seq,
        "steps": args.steps,
        "warmup": args.warmup,
        "peak_tflops": args.peak_tflops,
        "rows": rows,
        "failed": failed,
    }
    for spec in args.rows.split(","):
        name, _, policy = spec.partition(":")
        policy = policy or "none"
        if name not in presets:
            failed.append({"row": spec, "error": f"unknown preset {name}"})
            print(f"{spec}: failed: unknown preset {name}")
            continue
        cfg = replace(presets[name], fused_attention=True, max_seq_len=max(presets[name].max_seq_len, args.seq))
        micro = args.matched.get(spec) or args.micro_batch or GPU_MICRO_BATCH[name.split("-")[-1]]
        while True:
            try:
                row = run_row(cfg, policy, micro, args, device, flash)
            except torch.cuda.OutOfMemoryError as error:
                if micro == 1:
                    failed.append({"row": spec, "error": f"out of memory: {error}"})
                    break
                print(f"{spec}: micro-batch {micro} does not fit; retrying with {micro // 2}")
                micro //= 2
                release(device, args.compile)
                continue
            except Exception as error:
                print(f"{spec}: failed: {type(error).__name__}: {error}")
                failed.append({"row": spec, "error": f"{type(error).__name__}: {error}"})
                break
            label = name if policy == "none" else f"{name} +{policy}"
            row = {"row": spec, "name": label, **row}
            rows.append(row)
            peak = "-" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 2**30:.2f} GiB"
            print(
                f"{label:<22} {row['micro_batch']:>6} {row['tokens_per_s']:>12.0f} {100 * row['mfu']:>6.1f}% "
                f"{peak:>12} {row['step_s']:>8.3f} {row['loss']:>8.4f}"
            )
            break
        release(device, args.compile)
        if args.json:  # after every row, so that an interrupted run leaves the rows it measured
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if rows and not failed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

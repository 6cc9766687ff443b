"""Greedy decode speed of the independent PyTorch model (parity.py) with a KV cache, on the CPU, for
side-by-side runs with bench_inference: the PyTorch side for CoLA presets (transformers has no CoLA
layer; bench_hf_decode.py covers the full-rank ones with Hugging Face's own LLaMA).

Usage: bench_torch_decode.py PRESETS_JSON PRESET [--threads N] [--prompt N] [--new N] [--repeats N]
       [--batches 1,8] [--precision f32|bf16]

parity.py's modules with random weights (N(0, 0.02) matrices, unit norms: no subnormal values, which a
CPU computes on a slow path; otherwise values do not change any kernel's time), run by a cached
forward written here as our `nn/src/inference.rs` runs its own: per layer the new positions' keys (after
RoPE) and values are written into preallocated `[batch, heads, capacity, head_dim]` buffers, attention is
F.scaled_dot_product_attention of the new queries against the filled prefix (causal within a prefill),
and the head runs on the last position only. `--precision bf16` converts the model to bf16 (weights and
activations; parity.py's norms and softmax still compute in f32), as `bench_inference --precision bf16`
converts ours. A measurement is a PROMPT-token prefill of each row (not timed), then NEW greedy steps of
the whole batch, timed, logits argmax'd each step. Prints `decode_<batch> <tokens per second>` per batch,
medians over the repeats.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import parity  # noqa: E402  (the model, from the same folder)


class Cache:
    """Per layer, key and value buffers `[batch, heads, capacity, head_dim]` and the filled length."""

    def __init__(self, cfg, batch, capacity, dtype):
        shape = (batch, cfg.n_heads, capacity, cfg.head_dim)
        self.keys = [torch.empty(shape, dtype=dtype) for _ in range(cfg.n_layers)]
        self.values = [torch.empty(shape, dtype=dtype) for _ in range(cfg.n_layers)]
        self.len = 0


def attention(layer, x, cache, index, cos, sin):
    """parity.Attention.forward with the cache: x `[b, t, d]` at positions `cache.len ..`."""
    attn = layer.self_attn
    b, t, d = x.shape

    def heads(y):
        return y.view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)

    q, k, v = heads(attn.q_proj(x)), heads(attn.k_proj(x)), heads(attn.v_proj(x))
    start = cache.len
    c, s = cos[start : start + t].to(q.dtype), sin[start : start + t].to(q.dtype)
    q = q * c + parity.rotate_half(q) * s
    k = k * c + parity.rotate_half(k) * s
    cache.keys[index][:, :, start : start + t] = k
    cache.values[index][:, :, start : start + t] = v
    keys, values = cache.keys[index][:, :, : start + t], cache.values[index][:, :, : start + t]
    # One new position attends to everything cached; a prefill (start 0) is causal within itself.
    out = F.scaled_dot_product_attention(q, keys, values, is_causal=t > 1)
    return attn.o_proj(out.transpose(1, 2).reshape(b, t, d))


def forward(model, ids, cache, cos, sin):
    """Logits `[b, vocab]` of the last of `ids` `[b, t]`, extending the cache by t positions."""
    x = model.model.embed_tokens(ids)
    for index, layer in enumerate(model.model.layers):
        h = x + attention(layer, layer.input_layernorm(x), cache, index, cos, sin)
        x = h + layer.mlp(layer.post_attention_layernorm(h))
    cache.len += ids.shape[1]
    return model.lm_head(model.model.norm(x[:, -1:, :]))[:, 0, :]


def decode_seconds(model, cfg, batch, prompt_len, new, dtype, generator):
    cache = Cache(cfg, batch, prompt_len + new, dtype)
    cos, sin = parity.rope_cos_sin(prompt_len + new, cfg.head_dim, torch.float32)
    prompt = torch.randint(3, cfg.vocab_size, (batch, prompt_len), generator=generator)
    with torch.inference_mode():
        logits = forward(model, prompt, cache, cos, sin)
        began = time.perf_counter()
        for _ in range(new):
            logits = forward(model, logits.argmax(-1, keepdim=True), cache, cos, sin)
        logits.float().sum().item()
        return time.perf_counter() - began


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("presets")
    parser.add_argument("preset")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    presets = parity.load_presets(Path(args.presets).parent)
    if args.preset not in presets:
        sys.exit(f"bench_torch_decode: no preset {args.preset!r} in {args.presets}; have {sorted(presets)}")
    cfg = presets[args.preset]
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = parity.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # N(0, 0.02) matrices, unit norm weights: no subnormals on the way
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.02)
    model = model.to(dtype)
    generator = torch.Generator().manual_seed(0)
    for batch in [int(b) for b in args.batches.split(",")]:
        decode_seconds(model, cfg, batch, args.prompt, 2, dtype, generator)  # warm-up
        rates = []
        for _ in range(args.repeats):
            seconds = decode_seconds(model, cfg, batch, args.prompt, args.new, dtype, generator)
            rates.append(batch * args.new / seconds)
        print(f"decode_{batch} {statistics.median(rates)}", flush=True)


if __name__ == "__main__":
    main()

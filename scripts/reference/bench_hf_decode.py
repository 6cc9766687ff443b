"""Greedy decode speed of Hugging Face's LLaMA on the CPU, for side-by-side runs with bench_inference.

Usage: bench_hf_decode.py PRESETS_JSON PRESET [--threads N] [--prompt N] [--new N] [--repeats N]

The model is `transformers.LlamaForCausalLM` with the shapes of PRESET read from PRESETS_JSON (the preset
table `examples/parity_export.rs` exports, read by parity.py's loader; only full-rank presets, which are
plain LLaMA), random weights,
f32, SDPA attention. A decode measurement is what bench_inference measures: a PROMPT-token prompt at batch
1 (or 8), then NEW greedy tokens through `generate` with its KV cache. `generate` runs the prefill too, so
the decode time is `generate(NEW + 1 tokens) - generate(1 token)`: both include the same prefill, the
difference is NEW decode steps. Prints one line per batch: `decode_<batch> <tokens per second>`, medians
over the repeats.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity import NORM_EPS, PAD_ID, ROPE_THETA, load_presets  # noqa: E402


def model_config(presets_path, name):
    """The Hugging Face config of a full-rank preset, from the preset table parity.py reads."""
    presets = load_presets(Path(presets_path).parent)
    if name not in presets:
        sys.exit(f"bench_hf_decode: no preset {name!r} in {presets_path}; have {sorted(presets)}")
    c = presets[name]
    if c.rank is not None:
        sys.exit(f"bench_hf_decode: {name} is a CoLA preset; transformers has no CoLA layer (use full-*)")
    return LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.ffn_dim,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_heads,
        max_position_embeddings=c.max_seq_len,
        rms_norm_eps=NORM_EPS,
        rope_theta=ROPE_THETA,
        hidden_act="silu",
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        pad_token_id=PAD_ID,
        bos_token_id=None,
        eos_token_id=None,
    )


def generate_seconds(model, prompt, new_tokens):
    began = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
        )
    seconds = time.perf_counter() - began
    assert out.shape[1] == prompt.shape[1] + new_tokens, out.shape
    return seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("presets")
    parser.add_argument("preset")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = model_config(args.presets, args.preset)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = config.pad_token_id
    for batch in [int(b) for b in args.batches.split(",")]:
        prompt = torch.randint(2, config.vocab_size, (batch, args.prompt))
        generate_seconds(model, prompt, 2)  # warm-up
        rates = []
        for _ in range(args.repeats):
            prefill = generate_seconds(model, prompt, 1)
            total = generate_seconds(model, prompt, args.new + 1)
            rates.append(batch * args.new / max(total - prefill, 1e-9))
        print(f"decode_{batch} {statistics.median(rates)}", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Loads a full-rank checkpoint of the training program in Hugging Face transformers, unchanged, and
compares its logits with the ones this project computed for the same tokens.

A checkpoint folder (`checkpoint-<step>/` of a run) holds `model.safetensors` in the reference's names and
layouts and a Hugging Face style `config.json`, so `LlamaForCausalLM.from_pretrained(folder)` must load it
with no missing, unexpected or mis-shaped weight, and compute the same function: same RMSNorm, the same
rotate-half RoPE, the same attention and MLP. LOGITS_JSON is written by the project's side (the checkpoint
test `tests/suite/checkpoints.rs`):

    {"input_ids": [[...], ...], "logits": [[[...vocab...], ...seq...], ...batch...]}

The model runs in float32 on the CPU. Prints the largest absolute and relative logit difference and exits
with status 1 when the absolute one exceeds --tolerance (default 1e-5: logits here are O(1), f32 rounding
of two implementations summing in different orders over a few hundred terms is ~1e-6).

Usage: hf_load.py CHECKPOINT_DIR LOGITS_JSON [--tolerance 1e-5]
(any Python with torch and transformers, e.g. the reference venv of scripts/reference/run.sh)
"""
import argparse
import json
import sys

import torch
from transformers import LlamaForCausalLM


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint folder with model.safetensors and config.json")
    parser.add_argument("logits", help="JSON with input_ids [batch, seq] and logits [batch, seq, vocab]")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest absolute difference allowed")
    args = parser.parse_args()

    torch.set_num_threads(1)
    model, info = LlamaForCausalLM.from_pretrained(args.checkpoint, output_loading_info=True)
    # Missing, unexpected and mis-shaped weights, and loading errors: each must be empty.
    problems = {kind: names for kind, names in info.items() if names}
    if problems:
        print(f"{args.checkpoint}: weights do not match LlamaForCausalLM: {problems}", file=sys.stderr)
        return 1
    model = model.float().eval()

    with open(args.logits) as f:
        expected = json.load(f)
    ids = torch.tensor(expected["input_ids"], dtype=torch.long)
    ours = torch.tensor(expected["logits"], dtype=torch.float32)
    with torch.no_grad():
        theirs = model(input_ids=ids).logits.float()
    if theirs.shape != ours.shape:
        print(f"logits shape: transformers {tuple(theirs.shape)}, ours {tuple(ours.shape)}", file=sys.stderr)
        return 1
    difference = (theirs - ours).abs()
    max_abs = difference.max().item()
    max_rel = (difference / ours.abs().clamp_min(1e-3)).max().item()
    print(
        f"transformers LlamaForCausalLM vs ours: logits {tuple(ours.shape)}, max |difference| {max_abs:.3e}, "
        f"max relative {max_rel:.3e} (largest |logit| {ours.abs().max().item():.3f}), tolerance {args.tolerance:g}"
    )
    return 0 if max_abs <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())

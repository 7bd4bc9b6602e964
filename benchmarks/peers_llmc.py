"""Peer side of ``benchmarks/peers.py``: prune with llm-compressor, run inside ``.venv-peers``.

llm-compressor pins an older transformers than prunekit, so it runs here, in its own virtualenv and
its own process, and never imports prunekit. ``peers.py`` hands over the model directory and the
calibration token ids (a safetensors file) that prunekit's sampler built, so both tools see the very
same windows. Only the ``oneshot`` call is timed (model load and save are not); the pruned weights
are written back as a plain safetensors state dict, which prunekit then evaluates.

    .venv-peers/bin/python benchmarks/peers_llmc.py --model-dir DIR --calib calib.safetensors \
        --method wanda --sparsity 0.5 --threads 1 --batch-size 8 --out pruned.safetensors
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True, help="dense HF directory (the one prunekit loads)")
    ap.add_argument("--calib", required=True, help="safetensors file with 'input_ids' (n, seqlen) int64")
    ap.add_argument("--method", choices=("wanda", "sparsegpt"), required=True)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", required=True, help="safetensors file for the pruned state dict")
    a = ap.parse_args(argv)

    import torch
    torch.set_num_threads(a.threads)
    import transformers
    import llmcompressor
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    ids = load_file(a.calib)["input_ids"].to(torch.int64)
    n, seqlen = ids.shape
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})

    # Same linears as prunekit: every nn.Linear of the decoder blocks. llm-compressor's default
    # targets=["Linear"] also matches lm_head (it only warns), which SmolLM2 ties to the embeddings.
    common = dict(sparsity=a.sparsity, targets=["Linear"], ignore=["re:.*lm_head"])
    if a.method == "wanda":
        modifier = WandaPruningModifier(**common)
    else:  # the library defaults equal prunekit's: block 128, dampening 0.01·mean(diag H)
        modifier = SparseGPTModifier(block_size=128, dampening_frac=0.01, **common)

    t0, c0 = time.perf_counter(), time.process_time()
    oneshot(model=model, tokenizer=tok, dataset=ds, recipe=[modifier], num_calibration_samples=n,
            max_seq_length=seqlen, batch_size=a.batch_size, shuffle_calibration_samples=False)
    prune_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0

    sd = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, a.out)
    pruned = {name: float((m.weight == 0).float().mean()) for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear)}
    print("PEER_RESULT " + json.dumps({
        "method": a.method, "prune_s": prune_s, "cpu_s": cpu_s, "nsamples": n, "seqlen": seqlen, "dtype": a.dtype,
        "threads": torch.get_num_threads(), "batch_size": a.batch_size,
        "versions": {"llmcompressor": llmcompressor.__version__, "transformers": transformers.__version__,
                     "torch": torch.__version__},
        "linear_sparsity": pruned,
    }), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())

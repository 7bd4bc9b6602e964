"""Which part of bf16 moves a pruned perplexity: four ways to run the calibration forwards, each
pruned model then evaluated the same way (bf16 weights), so only the calibration differs.

    python -m benchmarks.dtype_variants --seeds 0,1,2 --sparsities 0.7,0.675 [--threads 1]

fp32      fp32 weights, fp32 forwards (what ``--dtype mixed`` prunes with)
bf16      bf16 weights, bf16 forwards (``--dtype bf16``)
upcast    bf16 weights, each block cast to fp32 for its forwards (activations fp32)
autocast  fp32 weights and residual stream, bf16 matmuls (``torch.autocast`` around the prune)

``--eval-split``: instead, prune once in fp32 per seed and sparsity and evaluate that model in fp32,
under bf16 autocast (mixed) and with bf16 weights (what bf16 evaluation alone changes)."""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

VARIANTS = ("fp32", "bf16", "upcast", "autocast")


def _cast(obj, dt):
    if isinstance(obj, torch.Tensor):
        return obj.to(dt) if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_cast(o, dt) for o in obj)
    if isinstance(obj, dict):
        return {k: _cast(v, dt) for k, v in obj.items()}
    return obj


@contextlib.contextmanager
def _upcast_blocks():
    """Every engine block forward in fp32 on a bf16-stored model (the block is cast back after)."""
    from prunekit.core import engine
    orig = engine.run_block

    def run_fp32(block, hidden, kwargs):
        dt = next(block.parameters()).dtype
        block.float()
        try:
            return orig(block, hidden.float(), _cast(kwargs, torch.float32))
        finally:
            block.to(dt)
    engine.run_block = run_fp32
    try:
        yield
    finally:
        engine.run_block = orig


def _prune(a, variant: str, metric: str, sp: float, seed: int):
    import prunekit
    from prunekit.core.loading import load_model
    rt = load_model(a.model, dtype="bf16" if variant in ("bf16", "upcast") else "fp32", offload="none")
    ctx = {"upcast": _upcast_blocks, "autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16)}.get(
        variant, contextlib.nullcontext)
    c0 = time.process_time()
    with ctx():
        rt, _ = prunekit.prune(rt, metric=metric, sparsity=sp, calib_samples=a.calib_samples,
                               calib_seqlen=a.calib_seqlen, seed=seed, progress=False)
    return rt, time.process_time() - c0


def _ppl(a, rt) -> tuple[float, float]:
    from prunekit.evaluation.perplexity import perplexity
    c0 = time.process_time()
    p = perplexity(rt, "wikitext2", 1024, a.eval_windows, progress=False)["perplexity"]
    return p, time.process_time() - c0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dtype_variants", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--metric", default="wanda")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sparsities", default="0.7,0.675")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--calib-seqlen", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--eval-split", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    for sp in (float(x) for x in a.sparsities.split(",")):
        for seed in (int(x) for x in a.seeds.split(",")):
            if a.eval_split:
                rt, _ = _prune(a, "fp32", a.metric, sp, seed)
                ref, c_ref = _ppl(a, rt)
                rt.eval_dtype = torch.bfloat16
                mixed, c_mixed = _ppl(a, rt)
                rt.eval_dtype = None
                rt.model.to(torch.bfloat16)
                low, c_low = _ppl(a, rt)
                print(f"{a.metric} {sp} seed {seed}: fp32 {ref:.3f} ({c_ref:.1f} CPU s); mixed {mixed:.3f} "
                      f"({100 * (mixed / ref - 1):+.2f} %, {c_mixed:.1f} s); bf16 weights {low:.3f} "
                      f"({100 * (low / ref - 1):+.2f} %, {c_low:.1f} s)", flush=True)
                continue
            for v in a.variants.split(","):
                rt, cpu = _prune(a, v, a.metric, sp, seed)
                rt.model.to(torch.bfloat16)
                print(f"{a.metric} {sp} seed {seed} {v:9}: ppl {_ppl(a, rt)[0]:.3f}, prune {cpu:.1f} CPU s", flush=True)


if __name__ == "__main__":
    main()

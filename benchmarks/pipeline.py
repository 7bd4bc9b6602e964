"""Pipeline benchmark on smollm2-135m, ratios measured in one run.

P1  = perplexity-eval tokens/s ÷ raw ``model(x)`` tokens/s on the same windows      (goal ≥ 0.95)
P2  = Wanda prune wall time ÷ one dense forward over the same calibration tokens   (goal ≤ 2.2)
RSS = peak RSS ÷ (fp32 model size + 2 × calibration activations)                   (goal ≤ 1.3)
      of a fresh process that loads the model and runs ``prune_model`` only (memory the
      allocator kept from other work would otherwise count), reported raw and net of the
      interpreter + libraries baseline measured before loading.

    python -m benchmarks.pipeline [--calib-samples 32 --calib-seqlen 512 --eval-windows 4] [--dtype fp32]
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import resource
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux clear_refs 5) so load-time transients don't count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _import_architecture(model_name: str) -> None:
    """Import the model class's modelling code before the baseline is read, as benchmarks.memory
    does: on SmolLM2 (Llama) it is 131 MB of RSS, which otherwise counted as prune memory (the
    fp32 "1.66 net" here against 1.40 from ``benchmarks.memory m3``: 0.22 of it)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from prunekit.core.aliases import dense_cache_for_gguf, resolve
    _, loc = resolve(model_name)
    d = dense_cache_for_gguf(Path(loc)) if loc.endswith(".gguf") else loc
    # a hub id or an unknown architecture: the baseline stays library-only
    with contextlib.suppress(Exception):
        MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(d))]


def prune_peak(model_name: str, calib_samples: int, calib_seqlen: int, batch_size: int, dtype=None) -> tuple:
    """In a fresh process: (baseline MB, peak MB during prune_model, load-time peak MB)."""
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from prunekit.core.data import calibration_data
    from prunekit.core.loading import load_model
    from prunekit.solvers.prune import prune_model
    _import_architecture(model_name)
    base = rss_mb()
    rt = load_model(model_name, dtype=dtype)
    load_peak = peak_mb()
    calib = calibration_data("c4", rt.tokenizer, calib_samples, calib_seqlen, 0)
    gc.collect()
    reset_peak()
    prune_model(rt, calib.input_ids, 0.5, "wanda", batch_size=batch_size, progress=False)
    return base, peak_mb(), load_peak


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--eval-seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", default=None, help="fp32, bf16, ... (default: pick_dtype's choice)")
    ap.add_argument("--p1-only", action="store_true", help="measure P1 only (no prune, no RSS process)")
    a = ap.parse_args(argv)

    import torch

    from prunekit.core.data import calibration_data, eval_tokens
    from prunekit.core.loading import load_model
    from prunekit.evaluation.perplexity import perplexity, window_nlls
    from prunekit.solvers.prune import prune_model

    rt = load_model(a.model, dtype=a.dtype)
    model, tok = rt.model, rt.tokenizer
    calib = calibration_data("c4", tok, a.calib_samples, a.calib_seqlen, 0)
    ids, _ = eval_tokens("wikitext2", tok, a.eval_seqlen)
    n = min(a.eval_windows, ids.shape[1] // a.eval_seqlen)
    windows = ids[0, : n * a.eval_seqlen].reshape(n, a.eval_seqlen)

    # P1: raw forward vs the perplexity evaluator on the same windows (warm-up first), then the
    # two interleaved window by window (raw, eval, eval, raw, ...) so that load from other
    # processes hits both alike; wall and process CPU time of each are summed.
    # raw forwards in the evaluation's precision (bf16 autocast under the mixed default), as the evaluator runs them
    with torch.no_grad(), rt.evaluating():
        model(input_ids=windows[:1], use_cache=False)
        t0 = time.perf_counter()
        for w in windows:
            model(input_ids=w[None], use_cache=False)
        raw = time.perf_counter() - t0
    res = perplexity(rt, "wikitext2", a.eval_seqlen, n, progress=False)
    p1 = (n * a.eval_seqlen / res["seconds"]) / (n * a.eval_seqlen / raw)
    tw = {"raw": [0.0, 0.0], "eval": [0.0, 0.0]}

    def timed(kind, fn):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        tw[kind][0] += time.perf_counter() - w0
        tw[kind][1] += time.process_time() - c0

    with torch.no_grad():
        for j, w in enumerate(windows):
            order = ("raw", "eval") if j % 2 == 0 else ("eval", "raw")
            for kind in order:
                if kind == "raw":
                    def raw_fwd(w=w):
                        with rt.evaluating():
                            model(input_ids=w[None], use_cache=False)
                    timed("raw", raw_fwd)
                else:
                    timed("eval", lambda w=w: window_nlls(rt, w[None], a.eval_seqlen, progress=False))
    p1_wall, p1_cpu = tw["raw"][0] / tw["eval"][0], tw["raw"][1] / tw["eval"][1]
    p1_lines = (f"P1  eval tok/s / raw tok/s      = {p1:.3f}   (eval {res['tokens_per_s']:.0f} tok/s, "
                f"raw {n * a.eval_seqlen / raw:.0f} tok/s; goal >= 0.95)\n"
                f"P1  interleaved per window      = {p1_wall:.3f} wall, {p1_cpu:.3f} process CPU   "
                f"(raw {tw['raw'][0]:.1f} s / {tw['raw'][1]:.1f} s cpu, "
                f"eval {tw['eval'][0]:.1f} s / {tw['eval'][1]:.1f} s cpu)")
    if a.p1_only:
        print(f"model {a.model}; eval {n}x{a.eval_seqlen}; precision {rt.precision}; "
              f"torch threads {torch.get_num_threads()}")
        print(p1_lines)
        return

    # P2: one dense forward over the calibration tokens vs a full Wanda prune
    with torch.no_grad():
        t0 = time.perf_counter()
        for b in range(0, a.calib_samples, a.batch_size):
            model(input_ids=calib.input_ids[b:b + a.batch_size], use_cache=False)
        fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    rep = prune_model(rt, calib.input_ids, 0.5, "wanda", batch_size=a.batch_size, progress=False)
    prune = time.perf_counter() - t0

    params = {p.data_ptr(): p.numel() for p in model.parameters()}  # tied weights counted once
    model_mb = sum(params.values()) * 4 / 2**20
    acts_mb = a.calib_samples * a.calib_seqlen * model.config.hidden_size * 4 / 2**20
    import multiprocessing as mp
    with mp.get_context("spawn").Pool(1) as pool:
        base, peak, load_peak = pool.apply(prune_peak,
                                           (a.model, a.calib_samples, a.calib_seqlen, a.batch_size, a.dtype))
    denom = model_mb + 2 * acts_mb
    print(f"model {a.model}: {sum(params.values())/1e6:.1f} M params; calibration {a.calib_samples}x{a.calib_seqlen}; "
          f"eval {n}x{a.eval_seqlen}; precision {rt.precision}; torch threads {torch.get_num_threads()}")
    print(p1_lines)
    print(f"P2  wanda prune / dense forward = {prune/fwd:.3f}   ({prune:.1f} s / {fwd:.1f} s; goal <= 2.2; "
          f"sparsity {rep['global_sparsity']:.4f})")
    print(f"RSS peak / (model + 2 acts)     = {peak/denom:.3f} raw, {(peak-base)/denom:.3f} net of the {base:.0f} MB "
          f"interpreter+libraries baseline   (peak {peak:.0f} MB of a fresh process during prune_model; "
          f"load-time peak {load_peak:.0f} MB; model {model_mb:.0f} MB, acts {acts_mb:.0f} MB; goal <= 1.3)")


if __name__ == "__main__":
    main()

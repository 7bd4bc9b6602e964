"""Memory benchmark (issue 12): models larger than memory, ratios measured in one run.

M1 = peak RSS ÷ fp32 model bytes of a child process that Wanda-prunes (or SparseGPT-prunes) a
     LLaMA-2-7B-shape random model with ``offload="disk"`` and evaluates one window      (goal ≤ 0.15 / 0.2)
M2 = wall time of a prune with ``offload=cpu|disk`` ÷ the in-memory run, SmolLM2         (goal ≤ 1.3)
M3 = peak RSS of a default Wanda prune of SmolLM2 ÷ (fp32 model + 2 × calibration acts)  (goal ≤ 1.3)

    python -m benchmarks.memory build            # the 7B-shape model, once (≈ 13.8 GB bf16 on disk)
    python -m benchmarks.memory m1 [--metric wanda|sparsegpt]
    python -m benchmarks.memory m2 | m3

The 7B-shape model (hidden 4096, MLP 11008, 32 blocks, 32 heads, SmolLM2's vocabulary) is written
tensor by tensor from seeded generators as bf16 safetensors shards under ``$PRUNEKIT_CACHE/dense``
(one shard per block), never whole in memory. Its numbers mean nothing; only memory and time do.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.pipeline import reset_peak  # one clear_refs helper

SHAPE_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32}
NAME_7B = "llama2-7b-shape-random-v1"


# ----------------------------------------------------------------------------- memory probes

def _status(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    return _status("VmRSS")


def peak_mb() -> float:
    """Kernel high-water mark of this process's RSS (VmHWM), MB."""
    v = _status("VmHWM")
    return v if not math.isnan(v) else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- the 7B-shape model

def build_random_llama(target: Path, shape: dict, seed: int = 0, dtype: str = "bf16") -> Path:
    """Write a random LLaMA with ``shape`` as per-block safetensors shards (atomic: staging dir +
    rename). Every tensor comes from its own seeded generator, so the model is reproducible and
    at most one block is ever in memory."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig

    from prunekit.core.aliases import _smollm2_gguf, dense_cache_for_gguf
    target = Path(target)
    if (target / "prunekit.json").is_file():
        return target
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    tok = AutoTokenizer.from_pretrained(dense_cache_for_gguf(_smollm2_gguf()))
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **shape)
    cfg.dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]
    H, I, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (H // cfg.num_attention_heads)
    std = cfg.initializer_range
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    counter = [0]

    def rand(*shape_):
        counter[0] += 1
        g = torch.Generator().manual_seed(seed * 1_000_003 + counter[0])
        return (torch.randn(shape_, generator=g, dtype=torch.float32) * std).to(dt)

    weight_map, total = {}, 0
    try:
        shards = [("model-embed.safetensors", lambda: {
            "model.embed_tokens.weight": rand(cfg.vocab_size, H),
            "model.norm.weight": torch.ones(H, dtype=dt),
            "lm_head.weight": rand(cfg.vocab_size, H)})]
        for i in range(L):
            def block(i=i):
                p = f"model.layers.{i}."
                return {p + "self_attn.q_proj.weight": rand(H, H), p + "self_attn.k_proj.weight": rand(kv, H),
                        p + "self_attn.v_proj.weight": rand(kv, H), p + "self_attn.o_proj.weight": rand(H, H),
                        p + "mlp.gate_proj.weight": rand(I, H), p + "mlp.up_proj.weight": rand(I, H),
                        p + "mlp.down_proj.weight": rand(H, I),
                        p + "input_layernorm.weight": torch.ones(H, dtype=dt),
                        p + "post_attention_layernorm.weight": torch.ones(H, dtype=dt)}
            shards.append((f"model-block{i:03d}.safetensors", block))
        for fname, make in shards:
            tensors = make()
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in tensors})
            del tensors
            print(f"  wrote {fname}", flush=True)
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
        cfg.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "prunekit.json").write_text(json.dumps({"built": "random-llama", "seed": seed, "shape": shape}))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def model_7b(seed: int = 0, blocks: int | None = None) -> Path:
    """The 7B-shape model; ``blocks`` < 32 builds a shallower model of the same width (a quick
    proxy for the per-block peak: with disk offload only one block is ever resident)."""
    from prunekit.core.cache import cache_dir
    if blocks and blocks != SHAPE_7B["num_hidden_layers"]:
        return build_random_llama(cache_dir() / "dense" / f"{NAME_7B}-{blocks}blocks",
                                  {**SHAPE_7B, "num_hidden_layers": blocks}, seed)
    return build_random_llama(cache_dir() / "dense" / NAME_7B, SHAPE_7B, seed)


def model_7b_built() -> bool:
    from prunekit.core.cache import cache_dir
    return (cache_dir() / "dense" / NAME_7B / "prunekit.json").is_file()


def fp32_bytes(model_dir: Path) -> int:
    """Parameter count × 4 from the safetensors headers (no tensor is read)."""
    from safetensors import safe_open
    n = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                shape = h.get_slice(k).get_shape()
                c = 1
                for d in shape:
                    c *= d
                n += c
    return 4 * n


# ----------------------------------------------------------------------------- child runs

def _child_prune(q, model: str, offload: str, metric: str, dtype: str | None, calib_samples: int,
                 calib_seqlen: int, eval_windows: int, eval_seqlen: int, reset_after_load: bool = False,
                 profile: str | None = None) -> None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401  (libraries count in the baseline, as in benchmarks.pipeline)
        from transformers import LlamaForCausalLM  # noqa: F401

        from prunekit.core.data import calibration_data
        from prunekit.core.loading import load_model
        from prunekit.evaluation.perplexity import perplexity
        from prunekit.solvers.prune import prune_model
        t = {}
        base = rss_mb()
        t0 = time.perf_counter()
        rt = load_model(model, "cpu", dtype, offload=offload)
        t["load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        calib = calibration_data("c4", rt.tokenizer, calib_samples, calib_seqlen, 0)
        t["data_s"] = time.perf_counter() - t0
        load_peak = peak_mb()
        if reset_after_load:  # M3 measures the prune, not from_pretrained's transients
            import gc
            gc.collect()
            reset_peak()
        t0, c0 = time.perf_counter(), time.process_time()
        prof = None
        if profile:  # cProfile of the prune only (``--profile FILE``: pstats dump + top lines printed)
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        rep = prune_model(rt, calib.input_ids, 0.5, metric, batch_size=min(8, calib_samples), progress=False)
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile)
        t["prune_s"] = time.perf_counter() - t0
        t["prune_cpu_s"] = time.process_time() - c0
        ppl = None
        if eval_windows:
            t0 = time.perf_counter()
            ppl = perplexity(rt, "wikitext2", eval_seqlen, eval_windows, progress=False)["perplexity"]
            t["eval_s"] = time.perf_counter() - t0
        off = rt.offloader
        if off is not None:
            t["block_reads"], t["block_writes"] = off.reads, off.writes
        q.put({"base_mb": base, "peak_mb": peak_mb(), "load_peak_mb": load_peak, "timings": t,
               "global_sparsity": rep["global_sparsity"], "ppl": ppl, "masks": None})
    except BaseException as e:  # report, never hang the parent
        q.put({"error": f"{type(e).__name__}: {e}"})


def run_child(**kw) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child_prune, args=(q,), kwargs=kw)
    t0 = time.perf_counter()
    p.start()
    out = q.get()
    p.join()
    out["wall_s"] = time.perf_counter() - t0
    if "error" in out:
        raise RuntimeError(out["error"])
    return out


def m1(metric: str = "wanda", dtype: str = "bf16", blocks: int | None = None, profile: str | None = None) -> dict:
    path = model_7b(blocks=blocks)
    fp32 = fp32_bytes(model_7b()) if (model_7b_built() or not blocks) else fp32_bytes(path)
    r = run_child(model=str(path), offload="disk", metric=metric, dtype=dtype, calib_samples=2,
                  calib_seqlen=128, eval_windows=1, eval_seqlen=128, profile=profile)
    r["fp32_gb"] = fp32 / 2 ** 30
    r["ratio"] = r["peak_mb"] * 2 ** 20 / fp32
    goal = 0.15 if metric == "wanda" else 0.2
    proxy = f", {blocks}-block proxy" if blocks else ""
    print(f"M1[{metric}, offload=disk, {dtype}{proxy}]: peak RSS {r['peak_mb'] / 1024:.2f} GiB ÷ fp32 model "
          f"{r['fp32_gb']:.2f} GiB = {r['ratio']:.3f} (goal ≤ {goal}); interpreter baseline "
          f"{r['base_mb']:.0f} MB; phases " + ", ".join(f"{k} {v:.0f}" for k, v in r["timings"].items())
          + f"; wall {r['wall_s']:.0f} s; sparsity {r['global_sparsity']:.3f}; ppl {r['ppl']}")
    return r


def m2(model: str = "smollm2-135m", calib_samples: int = 16, calib_seqlen: int = 256) -> dict:
    out = {}
    for metric in ("wanda", "sparsegpt"):
        base = None
        for off in ("none", "cpu", "disk"):
            r = run_child(model=model, offload=off, metric=metric, dtype=None, calib_samples=calib_samples,
                          calib_seqlen=calib_seqlen, eval_windows=0, eval_seqlen=0)
            s = r["timings"]["prune_s"]
            base = base or s
            out[(metric, off)] = s
            print(f"M2[{metric}, offload={off}]: prune {s:.1f} s, ÷ in-memory = {s / base:.2f} (goal ≤ 1.3); "
                  f"peak RSS {r['peak_mb']:.0f} MB", flush=True)
    return out


def m3(model: str = "smollm2-135m", calib_samples: int = 32, calib_seqlen: int = 512,
       dtype: str | None = None) -> float:
    from prunekit.core.aliases import dense_cache_for_gguf, resolve
    _, loc = resolve(model)
    d = dense_cache_for_gguf(Path(loc)) if loc.endswith(".gguf") else Path(loc)
    fp32 = fp32_bytes(d)
    # tied embeddings appear once in the file and once in the model: count parameters as loaded
    import transformers
    cfg = transformers.AutoConfig.from_pretrained(d)
    acts = 2 * calib_samples * calib_seqlen * cfg.hidden_size * 4
    r = run_child(model=model, offload="none", metric="wanda", dtype=dtype, calib_samples=calib_samples,
                  calib_seqlen=calib_seqlen, eval_windows=0, eval_seqlen=0, reset_after_load=True)
    ratio = r["peak_mb"] * 2 ** 20 / (fp32 + acts)
    net = (r["peak_mb"] - r["base_mb"]) * 2 ** 20 / (fp32 + acts)
    print(f"M3[{dtype or 'default dtype'}]: peak RSS {r['peak_mb']:.0f} MB ÷ (fp32 model {fp32 / 2**20:.0f} MB "
          f"+ 2 × calibration activations {acts / 2**20:.0f} MB) = {ratio:.2f} raw, {net:.2f} net of the "
          f"{r['base_mb']:.0f} MB interpreter + libraries baseline (goal ≤ 1.3); "
          f"load-time peak {r['load_peak_mb']:.0f} MB (not counted)")
    return ratio


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["build", "m1", "m2", "m3"])
    ap.add_argument("--metric", default="wanda", choices=["wanda", "sparsegpt"])
    ap.add_argument("--dtype", default=None, help="M1: default bf16; M2/M3: default pick_dtype's choice")
    ap.add_argument("--blocks", type=int, default=None, help="M1 on a shallower same-width proxy model")
    ap.add_argument("--profile", default=None, metavar="FILE",
                    help="M1: cProfile the prune in the child and dump pstats to FILE")
    ap.add_argument("--model", default=None, help="M2/M3 model (default smollm2-135m; tiny-llama for a smoke run)")
    ap.add_argument("--calib-samples", type=int, default=None, help="M2/M3 calibration windows")
    ap.add_argument("--calib-seqlen", type=int, default=None)
    a = ap.parse_args(argv)
    cal = {k: v for k, v in (("model", a.model), ("calib_samples", a.calib_samples),
                             ("calib_seqlen", a.calib_seqlen)) if v}
    if a.what == "build":
        t0 = time.perf_counter()
        p = model_7b()
        print(f"built {p} in {time.perf_counter() - t0:.0f} s; fp32 bytes {fp32_bytes(p) / 2**30:.2f} GiB")
    elif a.what == "m1":
        m1(a.metric, a.dtype or "bf16", a.blocks, a.profile)
    elif a.what == "m2":
        m2(**cal)
    else:
        m3(dtype=a.dtype, **cal)


if __name__ == "__main__":
    main()

"""Peer benchmark (goal P3): prunekit against llm-compressor, Wanda and SparseGPT, in one run.

P3 = prunekit prune wall ÷ llm-compressor prune wall   (goal ≤ 0.5 for Wanda and for SparseGPT)
     with perplexity within 2 % of the peer's or lower  (prunekit ppl ÷ peer ppl ≤ 1.02)

Both tools prune the same dense model directory (for an alias: the safetensors directory prunekit
dequantised the GGUF into, under $PRUNEKIT_CACHE), on the same calibration windows (built once here
by prunekit's sampler and handed to the peer as token ids), at the same uniform sparsity, over the
same linears (every nn.Linear of the decoder blocks; never lm_head), with the same number of torch
threads and the same calibration batch size, back to back. llm-compressor runs in its own virtualenv
(``make peers-venv``) through ``benchmarks/peers_llmc.py`` in a subprocess; only its ``oneshot``
call is timed, as only ``prune_model`` is timed here. Every pruned model, prunekit's and the
peer's, is then evaluated by the same prunekit perplexity code in fp32 on the same WikiText-2
windows, so only the pruning differs. prunekit prunes once per ``--dtypes`` entry (fp32 and bf16:
the issue asks for both rows); the row matching ``pick_dtype`` on this machine is marked default.

    python -m benchmarks.peers [--calib-samples 32 --calib-seqlen 512 --eval-seqlen 1024
                                --eval-windows 16 --threads 1]          # or: make benchmark-peers
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEER_SCRIPT = Path(__file__).resolve().parent / "peers_llmc.py"
DEFAULT_PEER_PYTHON = ROOT / ".venv-peers" / "bin" / "python"


def model_dir(name: str, workdir: Path) -> Path:
    """The dense HF directory both tools load: prunekit's dequantised cache for a GGUF alias, the
    directory itself for a local one, else the loaded model saved into ``workdir``."""
    models = _models()
    kind, loc = models.resolve(name)
    if kind == "dir":
        return Path(loc)
    dense = getattr(models, "_dense_cache_for_gguf", None)  # private; the fallback below is public
    if loc.endswith(".gguf") and dense is not None:
        return Path(dense(Path(loc)))
    model, tok = models.load_model(name, dtype="fp32")
    return models.save_model(model, tok, workdir / "dense")


def _models():
    """prunekit's models module (prunekit.core.models in the split layout, prunekit.models before)."""
    try:
        from prunekit.core import models
    except ImportError:
        from prunekit import models
    return models


def zero_masks(model) -> dict:
    """{block.linear: bool tensor of zeros} over the decoder-block linears."""
    from prunekit import layout
    lay = layout(model)
    return {f"{i}.{n}": (m.weight == 0).cpu() for i in range(lay.num_blocks) for n, m in lay.linears(i).items()}


def mask_agreement(a: dict, b: dict) -> float:
    """Fraction of decoder-block weights whose pruned/kept state is the same in both models."""
    same = sum(int((a[k] == b[k]).sum()) for k in a)
    return same / sum(v.numel() for v in a.values())


def run_peer(a, method: str, mdir: Path, calib_file: Path, out: Path) -> dict:
    cmd = [str(a.peer_python), str(PEER_SCRIPT), "--model-dir", str(mdir), "--calib", str(calib_file),
           "--method", method, "--sparsity", str(a.sparsity), "--dtype", a.peer_dtype,
           "--threads", str(a.threads), "--batch-size", str(a.batch_size), "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONPATH="")
    env.pop("PRUNEKIT_THREADS", None)  # the peer never imports prunekit; --threads sets torch's
    log = out.with_suffix(".log")
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEER_RESULT ")]
    if proc.returncode or not lines:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"llm-compressor {method} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return json.loads(lines[-1][len("PEER_RESULT "):])


def main(argv=None):
    ap = argparse.ArgumentParser(description="prunekit vs llm-compressor (P3)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="wanda,sparsegpt")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-seqlen", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-seqlen", type=int, default=1024)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("PRUNEKIT_THREADS", "0")) or None,
                    help="torch threads for both tools (default: PRUNEKIT_THREADS, else torch's)")
    ap.add_argument("--batch-size", type=int, default=8, help="calibration batch size, both tools")
    ap.add_argument("--dtypes", default="fp32,bf16", help="prunekit pruning dtypes, one row each")
    ap.add_argument("--peer-dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--peer-python", default=str(DEFAULT_PEER_PYTHON))
    a = ap.parse_args(argv)

    import torch
    from safetensors.torch import load_file, save_file
    from prunekit import calibration_data, layout, load_model, measure_sparsity, perplexity, prune_model
    pick_device, pick_dtype = _models().pick_device, _models().pick_dtype
    from prunekit.errors import PrunekitError

    if not Path(a.peer_python).is_file():
        raise PrunekitError(f"{a.peer_python} not found; run `make peers-venv` first")
    a.threads = a.threads or torch.get_num_threads()
    torch.set_num_threads(a.threads)
    methods = [m for m in a.methods.split(",") if m]
    dtypes = [d for d in a.dtypes.split(",") if d]
    default_dt = pick_dtype(None, pick_device(None))

    work = Path(tempfile.mkdtemp(prefix="prunekit-peers-"))
    mdir = model_dir(a.model, work)
    dense, tok = load_model(str(mdir), dtype="fp32")
    calib = calibration_data("c4", tok, a.calib_samples, a.calib_seqlen, a.seed)
    calib_file = work / "calib.safetensors"
    save_file({"input_ids": calib.input_ids.contiguous()}, str(calib_file))
    dense_sd = {k: v.detach().cpu().clone() for k, v in dense.state_dict().items()}
    lay = layout(dense)  # state-dict keys of the decoder-block linears, the only tensors to change
    lin_ids = {id(m.weight) for i in range(lay.num_blocks) for m in lay.linears(i).values()}
    linear_keys = {n for n, p in dense.named_parameters(remove_duplicate=False) if id(p) in lin_ids}

    def ppl(model) -> float:
        return perplexity(model.float(), tok, "wikitext2", a.eval_seqlen, a.eval_windows, progress=False)["perplexity"]

    t_all = time.perf_counter()
    rows = []  # (method, tool, dtype, prune wall s, prune cpu s, ppl, sparsity, extra)
    dense_ppl = ppl(dense)
    for method in methods:
        masks = {}
        for dt in dtypes:
            model, _ = load_model(str(mdir), dtype=dt)
            t0, c0 = time.perf_counter(), time.process_time()
            rep = prune_model(model, calib.input_ids, a.sparsity, method, batch_size=a.batch_size, progress=False)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            masks[dt] = zero_masks(model)
            rows.append((method, "prunekit", dt, wall, cpu, ppl(model), rep["global_sparsity"], ""))
            del model
        out = work / f"llmc-{method}.safetensors"
        res = run_peer(a, method, mdir, calib_file, out)
        peer_sd = load_file(str(out))
        model, _ = load_model(str(mdir), dtype="fp32")
        missing, unexpected = model.load_state_dict(peer_sd, strict=False)
        changed = [k for k, v in peer_sd.items() if k in dense_sd and not torch.equal(v, dense_sd[k].float())]
        outside = [k for k in changed if k not in linear_keys]
        agree = mask_agreement(masks[dtypes[0]], zero_masks(model)) if dtypes else float("nan")
        extra = (f"llmcompressor {res['versions']['llmcompressor']}, transformers "
                 f"{res['versions']['transformers']}; {len(changed)} tensors changed"
                 + (f" (outside decoder linears: {', '.join(outside)})" if outside else "")
                 + (f"; missing {list(missing)} unexpected {list(unexpected)}" if missing or unexpected else "")
                 + f"; mask agreement with prunekit {dtypes[0] if dtypes else ''}: {agree:.4f}")
        rows.append((method, "llm-compressor", a.peer_dtype, res["prune_s"], res["cpu_s"], ppl(model),
                     measure_sparsity(model)["global_sparsity"], extra))
        del model, peer_sd
        out.unlink(missing_ok=True)

    print(f"model {a.model} ({mdir}); sparsity {a.sparsity}; calibration c4 {a.calib_samples}x{a.calib_seqlen} "
          f"seed {a.seed}, batch {a.batch_size}; eval wikitext2 {a.eval_windows}x{a.eval_seqlen} (fp32, prunekit "
          f"perplexity for every model); torch threads {a.threads}; prunekit default dtype here: "
          f"{str(default_dt).replace('torch.', '')}; total {time.perf_counter() - t_all:.0f} s")
    print(f"dense perplexity {dense_ppl:.3f}")
    print(f"{'method':10} {'tool':15} {'dtype':6} {'prune s':>8} {'cpu s':>8} {'ppl':>9} {'sparsity':>8}")
    for m, tool, dt, wall, cpu, p, s, extra in rows:
        mark = " (default)" if tool == "prunekit" and pick_dtype(dt, pick_device(None)) == default_dt else ""
        print(f"{m:10} {tool:15} {dt:6} {wall:8.1f} {cpu:8.1f} {p:9.3f} {s:8.4f}{mark}")
    for m, tool, dt, wall, cpu, p, s, extra in rows:
        if extra:
            print(f"  {m} peer: {extra}")
    print("P3 ratios (prunekit ÷ llm-compressor; goal: wall <= 0.5 and ppl <= 1.02; cpu = process CPU time,"
          " less sensitive to other load):")
    for m in methods:
        peer = [r for r in rows if r[0] == m and r[1] == "llm-compressor"][0]
        for r in rows:
            if r[0] == m and r[1] == "prunekit":
                ok = r[3] / peer[3] <= 0.5 and r[5] / peer[5] <= 1.02
                print(f"  {m:10} {r[2]:5}  wall {r[3] / peer[3]:.3f}  cpu {r[4] / peer[4]:.3f}  "
                      f"ppl {r[5] / peer[5]:.4f}  ({'meets' if ok else 'misses'} P3)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

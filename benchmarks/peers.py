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
the issue asks for both rows); the row matching ``default_precision`` on this machine is marked default.

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
    """The dense HF directory both tools load: prunekit's dequantised cache for a GGUF alias or file,
    the directory itself for a local one (or an alias that is one), else the loaded model saved into
    ``workdir``."""
    from prunekit.core.aliases import dense_cache_for_gguf, resolve
    from prunekit.core.loading import load_model
    from prunekit.core.saving import save_model
    kind, loc = resolve(name)
    if loc.endswith(".gguf"):
        return dense_cache_for_gguf(Path(loc))
    if kind in ("dir", "alias"):
        return Path(loc)
    return save_model(load_model(name, dtype="fp32"), workdir / "dense")


def zero_masks(rt) -> dict:
    """{block.linear: bool tensor of zeros} over the decoder-block linears of runtime ``rt``."""
    masks = {}
    for i in range(rt.num_blocks):
        with rt.onload(i):
            masks.update({f"{i}.{n}": (m.weight == 0).cpu() for n, m in rt.layout.linears(i).items()})
    return masks


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
        proc = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, stderr=f, text=True, env=env)
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
    ap.add_argument("--dtypes", default="mixed,bf16", help="prunekit precisions (mixed, fp32, bf16), one row "
                    "each; mixed prunes exactly as fp32 (its bf16 is evaluation only)")
    ap.add_argument("--peer-dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--peer-python", default=str(DEFAULT_PEER_PYTHON))
    a = ap.parse_args(argv)

    import torch
    from safetensors.torch import load_file, save_file

    from prunekit.core.data import calibration_data
    from prunekit.core.devices import default_precision, pick_device
    from prunekit.core.loading import load_model
    from prunekit.errors import PrunekitError
    from prunekit.evaluation.perplexity import perplexity
    from prunekit.solvers.prune import measure_sparsity, prune_model

    if not Path(a.peer_python).is_file():
        raise PrunekitError(f"{a.peer_python} not found; run `make peers-venv` first")
    a.threads = a.threads or torch.get_num_threads()
    torch.set_num_threads(a.threads)
    methods = [m for m in a.methods.split(",") if m]
    dtypes = [d for d in a.dtypes.split(",") if d]
    default_dt = default_precision(pick_device(None))  # 'mixed' prunes in fp32

    work = Path(tempfile.mkdtemp(prefix="prunekit-peers-"))
    mdir = model_dir(a.model, work)
    # every model in memory (offload none): the peer's state dict is loaded into one, and each is
    # cast to fp32 for its evaluation
    dense = load_model(str(mdir), dtype="fp32", offload="none")
    calib = calibration_data("c4", dense.tokenizer, a.calib_samples, a.calib_seqlen, a.seed)
    calib_file = work / "calib.safetensors"
    save_file({"input_ids": calib.input_ids.contiguous()}, str(calib_file))
    dense_sd = {k: v.detach().cpu().clone() for k, v in dense.model.state_dict().items()}
    lay = dense.layout  # state-dict keys of the decoder-block linears, the only tensors to change
    lin_ids = {id(m.weight) for i in range(lay.num_blocks) for m in lay.linears(i).values()}
    linear_keys = {n for n, p in dense.model.named_parameters(remove_duplicate=False) if id(p) in lin_ids}

    def ppl(rt) -> float:
        rt.model.float()
        return perplexity(rt, "wikitext2", a.eval_seqlen, a.eval_windows, progress=False)["perplexity"]

    t_all = time.perf_counter()
    rows = []  # (method, tool, dtype, prune wall s, prune cpu s, ppl, sparsity, extra)
    dense_ppl = ppl(dense)
    for method in methods:
        masks = {}
        for dt in dtypes:
            model = load_model(str(mdir), dtype=dt, offload="none")
            t0, c0 = time.perf_counter(), time.process_time()
            rep = prune_model(model, calib.input_ids, a.sparsity, method, batch_size=a.batch_size, progress=False)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            masks[dt] = zero_masks(model)
            rows.append((method, "prunekit", dt, wall, cpu, ppl(model), rep["global_sparsity"], ""))
            del model
        out = work / f"llmc-{method}.safetensors"
        res = run_peer(a, method, mdir, calib_file, out)
        peer_sd = load_file(str(out))
        model = load_model(str(mdir), dtype="fp32", offload="none")
        missing, unexpected = model.model.load_state_dict(peer_sd, strict=False)
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
          f"{default_dt}; total {time.perf_counter() - t_all:.0f} s")
    print(f"dense perplexity {dense_ppl:.3f}")
    print(f"{'method':10} {'tool':15} {'dtype':6} {'prune s':>8} {'cpu s':>8} {'ppl':>9} {'sparsity':>8}")
    for m, tool, dt, wall, cpu, p, s, extra in rows:
        mark = " (default)" if tool == "prunekit" and dt == default_dt else ""
        print(f"{m:10} {tool:15} {dt:6} {wall:8.1f} {cpu:8.1f} {p:9.3f} {s:8.4f}{mark}")
    for m, tool, dt, wall, cpu, p, s, extra in rows:
        if extra:
            print(f"  {m} peer: {extra}")
    print("P3 ratios (prunekit ÷ llm-compressor; goal: wall <= 0.5 and ppl <= 1.02; cpu = process CPU time,"
          " less sensitive to other load):")
    for m in methods:
        peer = next(r for r in rows if r[0] == m and r[1] == "llm-compressor")
        for r in rows:
            if r[0] == m and r[1] == "prunekit":
                ok = r[3] / peer[3] <= 0.5 and r[5] / peer[5] <= 1.02
                print(f"  {m:10} {r[2]:5}  wall {r[3] / peer[3]:.3f}  cpu {r[4] / peer[4]:.3f}  "
                      f"ppl {r[5] / peer[5]:.4f}  ({'meets' if ok else 'misses'} P3)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

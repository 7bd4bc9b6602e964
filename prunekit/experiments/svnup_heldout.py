"""SV-NUP's held-out set: how far two disjoint held-out draws agree on the block values.

The layer game's value is the held-out NLL, so its Shapley values carry the held-out set's sampling
noise. Two draws of the default size, disjoint from each other and from the pruning samples at the
document level (no C4 document is shared), each give the block values with the default estimator;
their Spearman correlation is the draw-to-draw agreement of the default plan's ranking.

    python -m prunekit.experiments.svnup_heldout --model smollm2-135m --out docs/data/regime/svnup_draws.json

Resumable: each draw's values are written (atomically) when done and read back on a rerun.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from prunekit.core.data import Calibration, calibration_data
from prunekit.errors import PrunekitError, guarded
from prunekit.experiments.correlation import spearman
from prunekit.utils import atomic_write_json


def doc_disjoint_draw(dataset: str, tokenizer, nsamples: int, seqlen: int, seed: int, used_docs: set,
                      max_tries: int = 10000) -> Calibration:
    """``nsamples`` windows of ``seqlen`` tokens, each from a distinct document not in ``used_docs``
    (the calibration sampler's rule, one window per call with seeds seed·10⁴ + k, k = 0, 1, …)."""
    rows, picks, docs = [], [], set(used_docs)
    for k in range(max_tries):
        c = calibration_data(dataset, tokenizer, 1, seqlen, seed * 10_000 + k)
        doc = c.picks[0][0]
        if doc in docs:
            continue
        docs.add(doc)
        rows.append(c.input_ids[0])
        picks.append(c.picks[0])
        if len(rows) == nsamples:
            return Calibration(torch.stack(rows), dataset, seed, c.data_sha256, picks)
    raise PrunekitError(f"could not draw {nsamples} windows of {seqlen} tokens from unused {dataset} documents")


def draw_values(session, ids, target: float, window: int = 5, background: str = "both",
                base_metric: str = "wanda") -> dict:
    """The default estimator's block values on held-out ``ids`` (the session's model, dense)."""
    from prunekit.allocation.svnup.game import layer_game
    from prunekit.allocation.svnup.shapley import estimate
    session.restore()
    t0 = time.perf_counter()
    g = layer_game(session.stats, target, base_metric, "dense_coalition", heldout=ids, progress=False)
    with g:
        res = estimate(g, g.n, "sliding_window", window=window, background=background, progress=False)
    return {"values": [float(x) for x in res.values], "evaluations": int(res.evaluations),
            "seconds": time.perf_counter() - t0}


def _preflight(a) -> None:
    """Every argument checked before the model loads; the SV-NUP options through the method's contract."""
    from prunekit.allocation import spec
    from prunekit.core.loading import peek_model
    from prunekit.utils import check_writable
    check_writable(a.out, "--out")
    if a.draws < 2:
        raise PrunekitError(f"--draws {a.draws} must be >= 2 (the agreement is between draws)")
    info = peek_model(a.model)
    spec("svnup").check_options({"window": a.window, "background": a.background, "heldout_samples": a.heldout_samples,
                                 "heldout_seqlen": a.heldout_seqlen}, info.num_blocks, a.sparsity)


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m prunekit.experiments.svnup_heldout")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--heldout-samples", type=int, default=2)
    ap.add_argument("--heldout-seqlen", type=int, default=2048)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--window", type=int, default=5)
    ap.add_argument("--background", default="both")
    ap.add_argument("--out", required=True)
    return guarded("svnup_heldout", run, ap.parse_args(argv))


def run(a) -> int:
    """The draws of one cell, resuming from --out (a draw already recorded is read back)."""
    from prunekit.experiments.regime import _load, _session
    out = Path(a.out)
    _preflight(a)
    doc = _load(out)
    key = (f"{a.model}|s{a.sparsity:g}|{a.heldout_samples}x{a.heldout_seqlen}|w{a.window},{a.background}")
    entry = doc["entries"].setdefault(key, {"draws": []})
    sess = _session(a.model, 0)
    used = {p[0] for p in sess.calib.picks}
    draws = []
    for d in range(a.draws):
        cal = doc_disjoint_draw(sess.calib_dataset, sess.tokenizer, a.heldout_samples, a.heldout_seqlen,
                                1000 + d, used)
        used |= {p[0] for p in cal.picks}
        draws.append(cal)
    for d, cal in enumerate(draws):
        if d < len(entry["draws"]):
            continue
        rec = {"picks": [list(p) for p in cal.picks],
               **draw_values(sess, cal.input_ids, a.sparsity, a.window, a.background)}
        entry["draws"].append(rec)
        entry["settings"] = {"calibration": "c4 8 x 256, seed 0", "dtype": str(sess.model.dtype),
                             "estimator": f"sliding_window w={a.window} background={a.background}",
                             "game": "dense_coalition, base metric wanda"}
        atomic_write_json(out, doc)
        print(f"{key}: draw {d}: {rec['evaluations']} evaluations, {rec['seconds']:.0f} s", flush=True)
    vals = [r["values"] for r in entry["draws"]]
    entry["spearman"] = [[spearman(x, y) for y in vals] for x in vals]
    atomic_write_json(out, doc)
    print(f"{key}: draw-to-draw Spearman {entry['spearman'][0][1:]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Render the notebooks to HTML reports: ``python -m prunekit.reporting --profile quick``.

For each ``notebooks/NN_*.ipynb``: papermill runs it with ``profile`` into a staging directory
(results JSON included, via ``PRUNEKIT_REPORT_DIR``); on success the HTML and JSON replace the
previous ones atomically; on failure ``reports/<name>.failed.html`` shows the error, the previous
good report stays, and the command exits non-zero. ``reports/index.html`` links everything with a
one-line summary each. ``--strip`` clears notebook outputs in place (what gets committed).
``--ray`` (local) or ``--ray-address ADDRESS`` renders the notebooks as parallel Ray tasks.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from prunekit.utils import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def notebooks(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def strip(path: Path) -> bool:
    import nbformat
    nb = nbformat.read(path, as_version=4)
    changed = False
    for c in nb.cells:
        if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count")):
            c.outputs, c.execution_count = [], None
            changed = True
        for k in ("papermill", "execution"):
            if k in c.metadata:
                del c.metadata[k]
                changed = True
    for k in ("papermill",):
        if k in nb.metadata:
            del nb.metadata[k]
            changed = True
    if changed:
        atomic_write_text(path, nbformat.writes(nb) + "\n")
    return changed


def _title(path: Path) -> str:
    import nbformat
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "markdown":
            for line in c.source.splitlines():
                if line.strip():
                    return line.lstrip("# ").strip()
    return path.stem


_BAR = re.compile(r"\d+%\||(it|tok)/s\]|s/it\]")


def _drop_progress_bars(nb) -> None:
    """Keep stderr text (warnings, errors) but not progress-bar redraws: a sweep's bars would
    bury the report. Each line keeps only its last carriage-return segment."""
    for c in nb.cells:
        outs = []
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream" and o.get("name") == "stderr":
                lines = [ln.split("\r")[-1] for ln in o.get("text", "").split("\n")]
                o["text"] = "\n".join(ln for ln in lines if ln.strip() and not _BAR.search(ln))
                if not o["text"]:
                    continue
            outs.append(o)
        if c.cell_type == "code":
            c.outputs = outs


def _to_html(nb_path: Path) -> str:
    import nbformat
    from nbconvert import HTMLExporter
    nb = nbformat.read(nb_path, as_version=4)
    _drop_progress_bars(nb)
    body, _ = HTMLExporter().from_notebook_node(nb)
    return body


def render(nb: Path, out_dir: Path, profile: str, timeout: int | None = None, extra: dict | None = None) -> dict:
    """Run one notebook; returns {name, ok, seconds, error, summary}."""
    import papermill as pm
    name = nb.stem
    stage = Path(tempfile.mkdtemp(prefix=f"prunekit-{name}-"))
    executed = stage / f"{name}.ipynb"
    # the kernel inherits these: results JSON goes to staging; progress bars would flood the HTML
    env = {"PRUNEKIT_REPORT_DIR": str(stage), "TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1")}
    env_before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    t0 = time.perf_counter()
    err = None
    try:
        pm.execute_notebook(str(nb), str(executed), parameters={"profile": profile, **(extra or {})},
                            cwd=str(nb.parent), kernel_name="python3", progress_bar=False,
                            execution_timeout=timeout)
    except Exception as e:  # papermill still wrote the executed notebook with the error in it
        err = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    secs = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    page = _to_html(executed) if executed.exists() else f"<pre>{html.escape(err or 'no output')}</pre>"
    if err is None:
        atomic_write_text(out_dir / f"{name}.html", page)
        for js in stage.glob("*.json"):
            tmp = out_dir / f".{js.name}.tmp"
            shutil.copyfile(js, tmp)
            os.replace(tmp, out_dir / js.name)
        (out_dir / f"{name}.failed.html").unlink(missing_ok=True)
    else:
        atomic_write_text(out_dir / f"{name}.failed.html", page)
    shutil.rmtree(stage, ignore_errors=True)
    summary = _summary(out_dir / f"{name}.json")
    return {"name": name, "title": _title(nb), "ok": err is None, "seconds": secs, "error": err,
            "summary": summary, "profile": profile, "model": (extra or {}).get("model", "default")}


def _summary(results: Path) -> str:
    try:
        obj = json.loads(results.read_text())
    except Exception:
        return ""
    if isinstance(obj, dict):
        for k in ("summary", "verdict", "verdicts"):
            if k in obj:
                v = obj[k]
                return "; ".join(map(str, v)) if isinstance(v, list) else str(v)
    return ""


def write_index(out_dir: Path, runs: list[dict]) -> Path:
    state_file = out_dir / "index.json"
    state = {}
    if state_file.exists():
        try:
            state = {r["name"]: r for r in json.loads(state_file.read_text())}
        except Exception:
            state = {}
    for r in runs:
        state[r["name"]] = r
    rows = []
    for name, r in sorted(state.items()):
        ok = r["ok"]
        link = f'<a href="{name}.html">{html.escape(r["title"])}</a>' if (out_dir / f"{name}.html").exists() else html.escape(r["title"])
        status = "ok" if ok else f'<a href="{name}.failed.html">FAILED</a>: {html.escape(r["error"] or "")}'
        rows.append(f"<tr><td>{link}</td><td>{status}</td><td>{r['profile']}</td><td>{html.escape(str(r.get('model', 'default')))}</td>"
                    f"<td>{r['seconds']:.0f} s</td><td>{html.escape(r.get('summary') or '')}</td></tr>")
    page = ("<!doctype html><meta charset='utf-8'><title>prunekit reports</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}</style>"
            "<h1>prunekit reports</h1><table><tr><th>notebook</th><th>status</th><th>profile</th><th>model</th><th>time</th>"
            "<th>summary</th></tr>" + "".join(rows) + "</table>")
    atomic_write_text(state_file, json.dumps(list(state.values()), indent=1))
    return atomic_write_text(out_dir / "index.html", page)


def _render_task(nb: str, out_dir: str, profile: str, timeout, extra):
    return render(Path(nb), Path(out_dir), profile, timeout, extra)


def render_ray(nbs: list[Path], out_dir: Path, profile: str, timeout: int | None = None, extra: dict | None = None,
               address: str | None = None, num_cpus: int | None = None, log=print) -> list[dict]:
    """Render ``nbs`` as parallel Ray tasks (one CPU each), same failure handling as the serial
    loop: a notebook that fails (or whose worker dies) gets ``<name>.failed.html`` and a failed
    row, the others go on. ``out_dir`` must be visible to the workers (local Ray, shared disk)."""
    from prunekit.experiments.sweep import ray_init
    started = ray_init(address, num_cpus)
    import ray
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_render_task)
        refs = {task.remote(str(nb), str(out_dir), profile, timeout, extra): nb for nb in nbs}
        t0 = time.perf_counter()
        runs, pending = [], list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                nb = refs[ref]
                try:
                    r = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - the task itself died (worker crash, OOM)
                    lines = str(e).strip().splitlines()
                    err = f"{type(e).__name__}: {lines[-1] if lines else ''}"
                    out_dir.mkdir(parents=True, exist_ok=True)
                    atomic_write_text(out_dir / f"{nb.stem}.failed.html", f"<pre>{html.escape(str(e))}</pre>")
                    r = {"name": nb.stem, "title": _title(nb), "ok": False, "seconds": time.perf_counter() - t0,
                         "error": err, "summary": "", "profile": profile,
                         "model": (extra or {}).get("model", "default")}
                log(f"[reports] {nb.name}: {'ok' if r['ok'] else 'FAILED ' + str(r['error'])} in {r['seconds']:.0f} s")
                runs.append(r)
    finally:
        if started:
            ray.shutdown()
    return sorted(runs, key=lambda r: r["name"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunekit.reporting")
    ap.add_argument("--profile", default="quick", choices=["quick", "cpu", "paper"])
    ap.add_argument("--notebooks", default=str(ROOT / "notebooks"))
    ap.add_argument("--out", default=str(ROOT / "reports"))
    ap.add_argument("--only", default="", help="comma-separated notebook name prefixes, e.g. 00,10")
    ap.add_argument("--model", default=None,
                    help="override every notebook's `model` parameter (e.g. tiny-llama for a smoke run)")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    ap.add_argument("--strip", action="store_true", help="strip outputs of the notebooks in place and exit")
    ap.add_argument("--ray", action="store_true", help="render the notebooks as parallel tasks on a local Ray")
    ap.add_argument("--ray-address", default=None, help="render on an existing Ray cluster (shared disk)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    a = ap.parse_args(argv)
    nbs = notebooks(Path(a.notebooks))
    if a.only:
        nbs = [n for n in nbs if any(n.stem.startswith(p) for p in a.only.split(","))]
    if a.strip:
        for nb in nbs:
            print(("stripped " if strip(nb) else "clean    ") + nb.name)
        return 0
    runs = []
    if a.ray or a.ray_address:
        print(f"[reports] {len(nbs)} notebooks as Ray tasks (profile={a.profile}) ...", flush=True)
        runs = render_ray(nbs, Path(a.out), a.profile, a.timeout, {"model": a.model} if a.model else None,
                          a.ray_address, a.num_cpus)
        nbs = []
    for nb in nbs:
        print(f"[reports] {nb.name} (profile={a.profile}) ...", flush=True)
        r = render(nb, Path(a.out), a.profile, a.timeout, extra={"model": a.model} if a.model else None)
        print(f"[reports] {nb.name}: {'ok' if r['ok'] else 'FAILED ' + str(r['error'])} in {r['seconds']:.0f} s", flush=True)
        runs.append(r)
    idx = write_index(Path(a.out), runs)
    print(f"[reports] index: {idx}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

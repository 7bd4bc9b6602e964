"""Render the notebooks to HTML reports: ``python -m prunekit.reporting --profile quick``.

For each ``notebooks/NN_*.ipynb``: papermill runs it with ``profile`` into a staging directory
(results JSON included, via ``PRUNEKIT_REPORT_DIR``); on success the HTML and JSON replace the
previous ones atomically; on failure ``reports/<name>.failed.html`` shows the error, the previous
good report stays, and the command exits non-zero. ``reports/index.html`` links everything with a
one-line summary each.
Notebooks are committed stripped by nbstripout (``make strip-notebooks``; ``make nbstripout-filter``
installs it as the git filter named in ``.gitattributes``).
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

from prunekit.errors import PrunekitError
from prunekit.utils import atomic_write_bytes, atomic_write_text

ROOT = Path(__file__).resolve().parents[2]  # a checkout (notebooks/, reports/), or site-packages
CHECKOUT = (ROOT / "pyproject.toml").is_file() and (ROOT / "notebooks").is_dir()
SHARE = Path("share") / "prunekit" / "notebooks"  # where an install puts the notebooks (pyproject data-files)


def default_notebooks() -> Path:
    """The checkout's ``notebooks/``; in an installed copy the packaged ones (``<prefix>/share/prunekit/
    notebooks``, the venv's or the user's)."""
    if CHECKOUT:
        return ROOT / "notebooks"
    import site
    for prefix in (sys.prefix, site.getuserbase(), sys.base_prefix):
        if (Path(prefix) / SHARE).is_dir():
            return Path(prefix) / SHARE
    return Path(sys.prefix) / SHARE


def default_out() -> Path:
    """``reports/`` of the checkout, or of the current directory in an installed copy."""
    return ROOT / "reports" if CHECKOUT else Path.cwd() / "reports"


def notebooks(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


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
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")  # CSI (colours, cursor moves) and 2-byte escapes
_NOISE = re.compile(r"TqdmWarning|IProgress not found|ipywidgets")
_WIDGET = "application/vnd.jupyter.widget-view+json"


def _drop_progress_bars(nb) -> None:
    """Keep stderr text (warnings, errors) but not progress-bar redraws, terminal control codes or
    widget placeholders: a sweep's bars would bury the report (and `\x1b[A` leaves blank blocks).
    Each line keeps only its last carriage-return segment."""
    for c in nb.cells:
        outs = []
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream":
                text = _ANSI.sub("", o.get("text", ""))
                if o.get("name") == "stderr":
                    lines = [ln.split("\r")[-1] for ln in text.split("\n")]
                    text = "\n".join(ln for ln in lines if ln.strip() and not _BAR.search(ln)
                                      and not _NOISE.search(ln))
                o["text"] = text
                if not text.strip():
                    continue
            elif o.get("output_type") in ("display_data", "execute_result") and _WIDGET in o.get("data", {}):
                continue  # a live progress widget: nothing to show in a static page
            outs.append(o)
        if c.cell_type == "code":
            c.outputs = outs


def _results(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _to_html(nb_path: Path, title: str, prov: dict | None = None) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    from prunekit.reporting.provenance import to_html
    nb = nbformat.read(nb_path, as_version=4)
    _drop_progress_bars(nb)
    nb.metadata["title"] = title
    body, _ = HTMLExporter().from_notebook_node(nb, resources={"metadata": {"name": title}})
    if prov:  # the provenance block first thing in the page body
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + "<div style='margin:1em 2em'>" + to_html(prov) + "</div>",
                      body, count=1)
    return body


def _clean_papermill_paths(executed: Path, nb: Path) -> None:
    """papermill records where it read and wrote the notebook: the staging directory, deleted after
    the run. Keep names that mean something beside the report: the notebook's file name (input) and
    the executed copy's (output); no ``cwd``-style absolute paths."""
    import nbformat
    book = nbformat.read(executed, as_version=4)
    pm = book.metadata.get("papermill")
    if not pm:
        return
    pm["input_path"] = nb.name
    pm["output_path"] = executed.name
    for k in [k for k, v in pm.items() if isinstance(v, str) and str(executed.parent) in v]:
        pm[k] = pm[k].replace(str(executed.parent) + os.sep, "")
    atomic_write_text(executed, nbformat.writes(book) + "\n")


def _copy(src: Path, dst: Path) -> None:
    atomic_write_bytes(dst, src.read_bytes())  # O_EXCL staging name, never through a symlink


def render(nb: Path, out_dir: Path, profile: str, timeout: int | None = None, extra: dict | None = None) -> dict:
    """Run one notebook; returns {name, title, ok, seconds, error, summary, profile, model}. The
    executed notebook is kept beside its HTML (``<name>.ipynb``, or ``<name>.failed.ipynb``)."""
    import papermill as pm

    from prunekit.reporting.provenance import PARAMETERS_ENV, provenance
    name = nb.stem
    params = {"profile": profile, **(extra or {})}
    stage = Path(tempfile.mkdtemp(prefix=f"prunekit-{name}-"))
    executed = stage / f"{name}.ipynb"
    # the kernel inherits these: results JSON goes to staging; its parameters go into provenance;
    # progress bars (prunekit's and the libraries') stay silent in a non-interactive run
    env = {"PRUNEKIT_REPORT_DIR": str(stage), "TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1"),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", PARAMETERS_ENV: json.dumps(params, sort_keys=True),
           }
    if CHECKOUT:  # the kernel imports the prunekit that renders (this checkout), not another install
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env_before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    t0 = time.perf_counter()
    err = None
    try:
        pm.execute_notebook(str(nb), str(executed), parameters=params,
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
    if executed.exists():
        _clean_papermill_paths(executed, nb)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = _title(nb)
    res = _results(stage / f"{name}.json")
    prov = res.get("provenance") or provenance(models=[], profile=profile, parameters=params)
    page = (_to_html(executed, title, prov) if executed.exists()
            else f"<pre>{html.escape(err or 'no output')}</pre>")
    if err is None:
        atomic_write_text(out_dir / f"{name}.html", page)
        for js in stage.glob("*.json"):
            _copy(js, out_dir / js.name)
        _copy(executed, out_dir / f"{name}.ipynb")
        (out_dir / f"{name}.failed.html").unlink(missing_ok=True)
        (out_dir / f"{name}.failed.ipynb").unlink(missing_ok=True)
    else:
        atomic_write_text(out_dir / f"{name}.failed.html", page)
        if executed.exists():
            _copy(executed, out_dir / f"{name}.failed.ipynb")
    shutil.rmtree(stage, ignore_errors=True)
    summary = _summary(out_dir / f"{name}.json")
    models = [m["id"] for m in prov.get("models") or []] or [params.get("model") or "(notebook default)"]
    return {"name": name, "title": title, "ok": err is None, "seconds": secs, "error": err,
            "summary": summary, "profile": profile, "model": ", ".join(models)}


def _summary(results: Path) -> str:
    """One sentence for the index: the results' ``headline`` if the notebook wrote one, else its
    first summary item (verdicts are "; "-joined) with the count of the others."""
    obj = _results(results)
    data = obj.get("data") if isinstance(obj.get("data"), dict) else {}
    if data.get("headline"):
        return _sentence(str(data["headline"]))
    items = data.get("summary") if isinstance(data.get("summary"), list) else None
    if items is None:
        text = str(obj.get("summary") or "")
        items = [t for t in text.split("; ") if t.strip()]
    if not items:
        return ""
    more = len(items) - 1
    return _sentence(str(items[0])) + (f" ({more} more finding{'s' * (more > 1)} in the report.)" if more else "")


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text + ("" if text.endswith((".", "!", "?", ")")) else ".")


def _stamp(out_dir: Path, name: str) -> tuple[str, str]:
    """(date, code) of a report from the provenance in its results JSON."""
    prov = _results(out_dir / f"{name}.json").get("provenance") or {}
    g, c = prov.get("git") or {}, prov.get("code") or {}
    code = (g.get("commit", "")[:12] + (" (dirty)" if g.get("dirty") else "")) if g else (
        f"prunekit {c.get('version')} {str(c.get('digest', ''))[:12]}" if c else "")
    return str(prov.get("created") or "")[:16].replace("T", " "), code


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
        files = [f'<a href="{n}">{label}</a>' for n, label in
                 ((f"{name}.html", "HTML"), (f"{name}.ipynb", "notebook")) if (out_dir / n).exists()]
        title = html.escape(r["title"])
        link = f'<a href="{name}.html">{title}</a>' if (out_dir / f"{name}.html").exists() else title
        status = "ok" if ok else (f'<a href="{name}.failed.html">FAILED</a> (<a href="{name}.failed.ipynb">notebook</a>): '
                                  f'{html.escape(r["error"] or "")}')
        date, code = _stamp(out_dir, name)
        rows.append(f"<tr><td>{link}</td><td>{' · '.join(files)}</td><td>{status}</td><td>{r['profile']}</td>"
                    f"<td>{html.escape(str(r.get('model') or ''))}</td><td>{html.escape(date)} UTC</td>"
                    f"<td><code>{html.escape(code)}</code></td>"
                    f"<td>{r['seconds']:.0f} s</td><td>{html.escape(r.get('summary') or '')}</td></tr>")
    stamps = [_stamp(out_dir, n) for n in state]
    codes = sorted({c for _, c in stamps if c})
    head = (f"<p>Rendered {html.escape(max((d for d, _ in stamps if d), default='?'))} UTC (latest) from "
            + (", ".join(f"<code>{html.escape(c)}</code>" for c in codes) or "unknown code") + ".</p>")
    page = ("<!doctype html><meta charset='utf-8'><title>prunekit reports</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;border-bottom:1px solid #ddd;"
            "text-align:left;vertical-align:top}td:last-child{max-width:40em}</style>"
            "<h1>prunekit reports</h1>" + head + "<table><tr><th>notebook</th><th>files</th><th>status</th><th>profile</th>"
            "<th>model</th><th>date</th><th>code</th><th>time</th><th>summary</th></tr>" + "".join(rows) + "</table>")
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


def parse_params(items: list[str], nbs: list[Path]) -> dict:
    """``NAME=VALUE`` pairs (VALUE parsed as YAML) checked, before any rendering, against the
    ``parameters`` cell of every selected notebook (papermill would only warn about a typo)."""
    import papermill as pm
    import yaml
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip().isidentifier():
            raise ValueError(f"--param expects NAME=VALUE, got {item!r}")
        try:
            out[name.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"--param {name}: not a YAML value: {str(e).splitlines()[0]}") from None
    for nb in nbs if out else []:
        params = pm.inspect_notebook(str(nb))
        bad = sorted(set(out) - set(params))
        if bad:
            raise ValueError(f"{nb.name} has no parameter {', '.join(map(repr, bad))}; "
                             f"its parameters: {', '.join(sorted(params))}")
        for name, value in out.items():
            _check_type(nb, name, value, params[name].get("default"))
    return out


def _check_type(nb: Path, name: str, value, default: str | None) -> None:
    """A value of the kind the notebook's default has (a number for a number, a list for a list,
    true/false for a flag), checked before the notebook runs; a null default takes anything."""
    import ast
    try:
        d = ast.literal_eval(default) if default else None
    except (ValueError, SyntaxError):
        return
    if d is None or value is None:
        return
    if isinstance(d, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(d, (int, float)):
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        if ok and isinstance(d, int) and not isinstance(value, int):
            ok, kind = False, "an integer"
    elif isinstance(d, (list, tuple)):
        ok, kind = isinstance(value, list), "a list such as [0, 1]"
    elif isinstance(d, str):
        ok, kind = isinstance(value, str), "a string"
    else:
        return
    if not ok:
        raise ValueError(f"--param {name}={value!r}: {nb.name} expects {kind} (its default is {default})")


def check_out(out: Path, nbs: list[Path]) -> None:
    """``--out`` is a directory (or can be made one) and no report file in it is a symlink, a
    directory, a FIFO or a device: checked before any notebook runs."""
    import stat
    probe = out
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if os.path.islink(probe) and probe != out or not probe.is_dir():
        raise ValueError(f"--out {out}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {probe} is not writable")
    if probe != out:
        return
    names = ["index.html", "index.json"] + [f"{nb.stem}{suf}" for nb in nbs for suf in
                                            (".html", ".ipynb", ".json", ".failed.html", ".failed.ipynb")]
    for n in names:
        try:
            mode = os.lstat(out / n).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode):
            raise ValueError(f"--out: {out / n} is not a regular file (symlink, directory, device or pipe); "
                             "refusing to replace it")


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (exit 2), like the prunekit CLI."""

    def error(self, message):
        print(f"{self.prog}: error: {message.splitlines()[0]}", file=sys.stderr)
        raise SystemExit(2)


def main(argv=None) -> int:
    ap = _Parser(prog="python -m prunekit.reporting")
    ap.add_argument("--profile", default="quick", choices=["quick", "cpu", "paper"])
    ap.add_argument("--notebooks", default=None,
                    help="folder of NN_*.ipynb notebooks (default: the checkout's notebooks/ or the installed ones)")
    ap.add_argument("--out", default=None, help="output folder (default: the checkout's reports/ or ./reports)")
    ap.add_argument("--only", default="", help="comma-separated notebook name prefixes, e.g. 00,10")
    ap.add_argument("--model", default=None,
                    help="override every notebook's `model` parameter (e.g. tiny-llama for a smoke run)")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                    help="set a notebook parameter (VALUE read as YAML: 3, [0, 1], null, a path); repeatable, "
                         "e.g. -p results=runs.jsonl -p 'seeds=[0]'")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    ap.add_argument("--ray", action="store_true", help="render the notebooks as parallel tasks on a local Ray")
    ap.add_argument("--ray-address", default=None, help="render on an existing Ray cluster (shared disk)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    a = ap.parse_args(argv)
    a.notebooks = a.notebooks or str(default_notebooks())
    a.out = a.out or str(default_out())
    if not Path(a.notebooks).is_dir():
        print(f"prunekit.reporting: error: --notebooks {a.notebooks} is not a directory", file=sys.stderr)
        return 2
    nbs = notebooks(Path(a.notebooks))
    if a.only:
        nbs = [n for n in nbs if any(n.stem.startswith(p) for p in a.only.split(","))]
    if not nbs:
        print(f"prunekit.reporting: error: no NN_*.ipynb notebooks in {a.notebooks}"
              + (f" matching --only {a.only}" if a.only else ""), file=sys.stderr)
        return 2
    try:
        extra = parse_params(a.param, nbs)
    except ValueError as e:
        print(f"prunekit.reporting: error: {e}", file=sys.stderr)
        return 2
    try:
        check_out(Path(a.out), nbs)
        if a.ray_address:  # the sweep's check: a TCP connection, then a gRPC answer, within 5 s each
            from prunekit.experiments.sweep.runners import check_address
            check_address(a.ray_address)
    except (ValueError, PrunekitError) as e:
        print(f"prunekit.reporting: error: {e}", file=sys.stderr)
        return 2
    if a.model:
        extra["model"] = a.model
    extra = extra or None
    runs = []
    if a.ray or a.ray_address:
        print(f"[reports] {len(nbs)} notebooks as Ray tasks (profile={a.profile}) ...", flush=True)
        runs = render_ray(nbs, Path(a.out), a.profile, a.timeout, extra, a.ray_address, a.num_cpus)
        nbs = []
    for nb in nbs:
        print(f"[reports] {nb.name} (profile={a.profile}) ...", flush=True)
        r = render(nb, Path(a.out), a.profile, a.timeout, extra=extra)
        print(f"[reports] {nb.name}: {'ok' if r['ok'] else 'FAILED ' + str(r['error'])} in {r['seconds']:.0f} s", flush=True)
        runs.append(r)
    idx = write_index(Path(a.out), runs)
    print(f"[reports] index: {idx}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

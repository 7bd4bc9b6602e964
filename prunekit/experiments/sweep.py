"""Sweeps as data: a grid file (YAML) of models × allocations × metrics × sparsities × seeds, run
serially in-process by default or as Ray tasks when asked, resumable from its JSON-lines results.

    prunekit sweep GRID.yaml --out results.jsonl                 # in-process, serial
    prunekit sweep GRID.yaml --out results.jsonl --ray           # local Ray started by prunekit
    prunekit sweep GRID.yaml --out results.jsonl --ray-address auto   # an existing Ray cluster

A grid file (``safe_load`` only; every key optional except ``models`` and ``allocations``)::

    name: comparison-quick
    models: [smollm2-135m]
    allocations:                        # a name, or {method, label, options}
      - uniform
      - {method: owl, options: {lam: 0.08}}
      - {label: absorption(owl), method: absorption, options: {base: owl}}
    method_options: {svnup: {estimator: sliding_window}}   # defaults per method (a cell's own win)
    metrics: [wanda]
    sparsities: [0.7]
    seeds: [0, 1, 2]                    # calibration draws
    calibration: {dataset: c4, samples: 4, seqlen: 128, batch_size: 8}
    evaluation: {datasets: [wikitext2], seqlen: 256, windows: 2}
    zero_shot: {tasks: [arc_easy], limit: 8}
    device: null                        # CUDA when present
    dtype: null

A *cell* is one (model, seed, sparsity, metric, allocation) with its resolved settings; its key is
a hash of those settings. Each finished cell appends one JSON line: the ``Session.run`` record
(the record of ``prunekit prune --out``) plus ``cell``, ``settings``, ``code_version`` and
``status`` (``ok`` or ``error`` with the message). A re-run skips every cell that already has a
record with the same settings and code version; ``retries`` re-runs failed ones.

The in-process path loads each model once and walks its seeds with ``Session.reseed`` (the loop
``Session.sweep`` has always run, which now calls ``iter_session`` here). The Ray path submits one
task per (model, seed) group (one model load per task), requesting a GPU when the cluster has
them and CPUs otherwise; records stream back and are appended as each cell finishes. Ray is
imported only on that path.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from prunekit.errors import PrunekitError

GRID_DIR = Path(__file__).resolve().parent / "grids"
GRID_KEYS = ("name", "description", "models", "allocations", "method_options", "metrics", "sparsities", "groups",
             "seeds", "calibration", "evaluation", "zero_shot", "device", "dtype")
CALIBRATION = {"dataset": "c4", "samples": 32, "seqlen": 512, "batch_size": 8}
EVALUATION = {"datasets": ["wikitext2"], "seqlen": 512, "windows": 16}
ZERO_SHOT = {"tasks": [], "limit": None}
VOLATILE = ("timings_s", "cell_seconds", "cell_cpu_seconds", "attempt")  # differ between two runs of the same cell


# ----------------------------------------------------------------------------- the grid

@dataclass
class Grid:
    models: list
    allocations: dict            # label -> (method, options)
    metrics: list
    sparsities: list
    seeds: list
    calibration: dict = field(default_factory=lambda: dict(CALIBRATION))
    evaluation: dict = field(default_factory=lambda: dict(EVALUATION))
    zero_shot: dict = field(default_factory=lambda: dict(ZERO_SHOT))
    device: str | None = None
    dtype: str | None = None
    name: str = "grid"
    groups: list | None = None   # designed subsets [(sparsity, metric, [labels])] instead of the product

    def _combos(self):
        if self.groups is not None:
            return [(s, mt, labs) for s, mt, labs in self.groups]
        return [(s, mt, list(self.allocations)) for s in self.sparsities for mt in self.metrics]

    def cells(self) -> list[dict]:
        """Every cell's resolved settings, in run order: model > seed > (sparsity > metric, or the
        designed groups in order) > allocation."""
        out = []
        for model in self.models:
            for seed in self.seeds:
                for s, mt, labs in self._combos():
                    for lab in labs:
                        method, opts = self.allocations[lab]
                        out.append({"model": model, "seed": seed, "sparsity": s, "metric": mt,
                                    "allocation": lab, "method": method, "options": opts,
                                    "calibration": self.calibration, "evaluation": self.evaluation,
                                    "zero_shot": self.zero_shot, "device": self.device, "dtype": self.dtype})
        return out


def _fail(where: str, msg: str):
    raise PrunekitError(f"{where}: {msg}")


def _list(where, v, kind, check=None, allow_empty=False):
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or (not v and not allow_empty):
        _fail(where, f"expected a {'' if allow_empty else 'non-empty '}list of {kind.__name__}, got {v!r}")
    out = []
    for x in v:
        if kind is float and isinstance(x, int) and not isinstance(x, bool):
            x = float(x)
        if not isinstance(x, kind) or isinstance(x, bool):
            _fail(where, f"expected {kind.__name__} values, got {x!r}")
        if check:
            check(x)
        out.append(x)
    if len(set(map(repr, out))) != len(out):
        _fail(where, f"duplicate values in {out}")
    return out


def _section(where, v, defaults, checks):
    if v is None:
        return dict(defaults)
    if not isinstance(v, dict):
        _fail(where, f"expected a mapping, got {v!r}")
    unknown = sorted(set(v) - set(defaults))
    if unknown:
        _fail(where, f"unknown key {', '.join(map(repr, unknown))}; allowed: {', '.join(defaults)}")
    out = {**defaults, **v}
    for k, check in checks.items():
        try:
            out[k] = check(out[k])
        except PrunekitError as e:
            _fail(f"{where}.{k}", str(e))
    return out


def _int(lo=1, nullable=False):
    def check(x):
        if x is None and nullable:
            return None
        if not isinstance(x, int) or isinstance(x, bool) or x < lo:
            raise PrunekitError(f"expected an integer >= {lo}{' or null' if nullable else ''}, got {x!r}")
        return x
    return check


def _one_of(choices):
    def check(x):
        if x not in choices:
            raise PrunekitError(f"unknown '{x}'; choose from {', '.join(choices)}")
        return x
    return check


def _options(where, method, opts, method_options):
    """``method``'s options over its grid-wide defaults, checked by the registry contract; a wrapper
    (absorption's ``base``) gets the wrapped method's defaults and check for ``<wraps>_options``."""
    from prunekit.allocation import spec
    sp = spec(method)
    if not isinstance(opts, dict):
        _fail(where, f"options must be a mapping, got {opts!r}")
    merged = {**method_options.get(method, {}), **opts}
    try:
        merged = sp.check_options(merged)
        inner = f"{sp.wraps}_options" if sp.wraps else None
        if inner and inner in sp.options:
            base = merged.get(sp.wraps, sp.options[sp.wraps].default)
            if base is not None:
                merged[inner] = spec(base).check_options({**method_options.get(base, {}),
                                                          **(merged.get(inner) or {})})
    except PrunekitError as e:
        _fail(where, str(e))
    return merged


def parse_grid(obj: dict, where: str = "grid") -> Grid:
    """Validate a grid mapping before any work; every problem is one PrunekitError line."""
    from prunekit.allocation import spec
    from prunekit.core.data import DATASETS
    from prunekit.solvers.masks import check_sparsity_value
    from prunekit.solvers.prune import METRICS
    if not isinstance(obj, dict):
        _fail(where, f"expected a mapping at the top level, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(GRID_KEYS))
    if unknown:
        _fail(where, f"unknown key {', '.join(map(repr, unknown))}; allowed: {', '.join(GRID_KEYS)}")
    for k in ("models", "allocations"):
        if k not in obj:
            _fail(where, f"missing '{k}'")
    models = _list(f"{where}: models", obj["models"], str)
    mo = obj.get("method_options") or {}
    if not isinstance(mo, dict):
        _fail(f"{where}: method_options", f"expected a mapping method -> options, got {mo!r}")
    for m, o in mo.items():
        try:
            spec(m)
        except PrunekitError as e:
            _fail(f"{where}: method_options", str(e))
        if not isinstance(o, dict):
            _fail(f"{where}: method_options.{m}", f"expected a mapping, got {o!r}")
        try:
            spec(m).check_options(o)
        except PrunekitError as e:
            _fail(f"{where}: method_options.{m}", str(e))
    allocs = obj["allocations"]
    if not isinstance(allocs, list) or not allocs:
        _fail(f"{where}: allocations", f"expected a non-empty list, got {allocs!r}")
    variants = {}
    for i, a in enumerate(allocs):
        w = f"{where}: allocations[{i}]"
        if isinstance(a, str):
            a = {"method": a}
        if not isinstance(a, dict):
            _fail(w, f"expected a name or a mapping {{method, label, options}}, got {a!r}")
        bad = sorted(set(a) - {"method", "label", "options"})
        if bad or "method" not in a:
            _fail(w, f"keys are method (required), label, options; got {', '.join(map(str, a))}")
        try:
            spec(a["method"])
        except PrunekitError as e:
            _fail(w, str(e))
        label = str(a.get("label") or a["method"])
        if label in variants:
            _fail(w, f"duplicate label '{label}' (give each variant its own label)")
        variants[label] = (a["method"], _options(w, a["method"], a.get("options") or {}, mo))
    groups = None
    if obj.get("groups") is not None:  # a designed grid: only these (sparsity, metric, allocations) runs
        gl = _list(f"{where}: groups", obj["groups"], dict)
        groups = []
        for i, g in enumerate(gl):
            w = f"{where}: groups[{i}]"
            if sorted(g) != ["allocations", "metric", "sparsity"]:
                _fail(w, f"keys are sparsity, metric, allocations; got {', '.join(map(str, g))}")
            check_sparsity_value(float(g["sparsity"]))
            _one_of(METRICS)(g["metric"])
            labs = _list(f"{w}: allocations", g["allocations"], str)
            missing = [x for x in labs if x not in variants]
            if missing:
                _fail(w, f"allocation label(s) {', '.join(missing)} are not in 'allocations'")
            groups.append((float(g["sparsity"]), g["metric"], labs))
        if "metrics" in obj or "sparsities" in obj:
            _fail(where, "give either 'groups' or 'metrics'/'sparsities', not both")
    metrics = (list(dict.fromkeys(mt for _, mt, _ in groups)) if groups is not None else
               _list(f"{where}: metrics", obj.get("metrics", ["wanda"]), str, _one_of(METRICS)))
    sparsities = (list(dict.fromkeys(s for s, _, _ in groups)) if groups is not None else
                  _list(f"{where}: sparsities", obj.get("sparsities", [0.5]), float, check_sparsity_value))
    seeds = _list(f"{where}: seeds", obj.get("seeds", [0]), int, _int(0))
    calib = _section(f"{where}: calibration", obj.get("calibration"), CALIBRATION,
                     {"dataset": _one_of(DATASETS), "samples": _int(), "seqlen": _int(), "batch_size": _int()})
    evaluation = _section(f"{where}: evaluation", obj.get("evaluation"), EVALUATION,
                          {"datasets": lambda v: _list("datasets", v, str, _one_of(DATASETS), allow_empty=True),
                           "seqlen": _int(), "windows": _int(nullable=True)})
    zs = _section(f"{where}: zero_shot", obj.get("zero_shot"), ZERO_SHOT,
                  {"tasks": lambda v: _list("tasks", v or [], str, allow_empty=True),
                   "limit": _int(nullable=True)})
    for k in ("device", "dtype", "name"):
        if obj.get(k) is not None and not isinstance(obj[k], str):
            _fail(f"{where}: {k}", f"expected a string, got {obj[k]!r}")
    return Grid(models, variants, metrics, sparsities, seeds, calib, evaluation, zs,
                obj.get("device"), obj.get("dtype"), obj.get("name") or "grid", groups)


def _grid_path(path_or_name) -> Path:
    p = Path(path_or_name)
    if not p.exists() and (GRID_DIR / f"{path_or_name}.yaml").is_file():
        p = GRID_DIR / f"{path_or_name}.yaml"
    if not p.is_file():
        names = ", ".join(sorted(q.stem for q in GRID_DIR.glob("*.yaml")))
        raise PrunekitError(f"grid file {p} not found (packaged grids: {names})")
    return p


def read_grid(path_or_name) -> dict:
    """The raw mapping of a grid file or packaged grid name (``comparison-cpu``), unvalidated, so a
    caller (a notebook's parameters) can override keys before ``load_grid`` / ``run_grid``."""
    import yaml
    p = _grid_path(path_or_name)
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise PrunekitError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None


def load_grid(path_or_obj) -> Grid:
    """A validated ``Grid`` from a YAML file, a packaged grid name (``comparison-quick``) or a mapping."""
    if isinstance(path_or_obj, Grid):
        return path_or_obj
    if isinstance(path_or_obj, dict):
        return parse_grid(path_or_obj)
    return parse_grid(read_grid(path_or_obj), str(_grid_path(path_or_obj)))


def comparison_grid(profile: str, model: str | None = None) -> dict:
    """Notebook 50's grid for a profile, from ``profiles.COMPARISON`` (what the shipped
    ``grids/comparison-<profile>.yaml`` files hold; tests/test_sweep.py checks they agree)."""
    from prunekit.experiments import comparison
    s = comparison.settings(profile)
    mo = s["method_options"]
    used = {lab for g in s["groups"] for lab in g["allocations"]}
    allocs = []
    for label, method, opts in comparison.configurations():
        if label in used:
            allocs.append(method if (label == method and not opts) else {"label": label, "method": method,
                                                                          "options": dict(opts)})
    return {"name": f"comparison-{profile}",
            "description": f"notebook 50 (grand comparison), profile {profile}: experiments/profiles.py COMPARISON",
            "models": [model] if model else list(s["models"]), "allocations": allocs, "method_options": {k: dict(v) for k, v in mo.items()},
            "groups": [{"sparsity": g["sparsity"], "metric": g["metric"], "allocations": list(g["allocations"])}
                       for g in s["groups"]],
            "seeds": list(s["seeds"]),
            "calibration": {"dataset": "c4", "samples": s["calib_samples"], "seqlen": s["calib_seqlen"],
                            "batch_size": 8},
            "evaluation": {"datasets": list(s["eval_datasets"]), "seqlen": s["eval_seqlen"],
                           "windows": s["eval_windows"]},
            "zero_shot": {"tasks": list(s["zero_shot_tasks"] or []), "limit": s["zero_shot_limit"]}}


def write_comparison_grids(folder: Path = GRID_DIR) -> list[Path]:
    """(Re)generate the packaged notebook-50 grid files from the profile tables."""
    import yaml

    from prunekit.experiments.profiles import COMPARISON
    from prunekit.utils import atomic_write_text
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for prof in COMPARISON:
        head = ("# Generated by `python -m prunekit.experiments.sweep --write-comparison-grids` from\n"
                "# prunekit/experiments/profiles.py (COMPARISON, COMPARISON_METHOD_OPTIONS); edit those, then regenerate.\n")
        text = head + yaml.safe_dump(comparison_grid(prof), sort_keys=False, default_flow_style=None, width=110)
        out.append(atomic_write_text(folder / f"comparison-{prof}.yaml", text))
    return out


# ----------------------------------------------------------------------------- cells and records

def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cell_key(settings: dict) -> str:
    """Stable id of a cell's resolved settings (sha256 of canonical JSON, 16 hex digits)."""
    return hashlib.sha256(_canonical(settings).encode()).hexdigest()[:16]


_CODE_VERSION = None


def source_digest(root: Path) -> str:
    """sha256 (16 hex digits) of the package's code — every ``*.py`` and grid ``*.yaml`` under ``root``,
    by relative path and content. Unlike the git commit it sees uncommitted edits, and a commit that
    touches only docs, tests or notebooks leaves it (and so a filled results file) valid."""
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts)
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def code_version() -> dict:
    """What a result depends on besides its settings: package versions plus ``source_digest`` of the
    prunekit package (a re-run after a code change recomputes)."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        from prunekit import utils
        v = utils.versions()
        v = {k: v[k] for k in ("prunekit", "torch", "transformers") if k in v}
        v["source"] = source_digest(Path(__file__).resolve().parents[1])
        _CODE_VERSION = v
    return dict(_CODE_VERSION)


def row(rec: dict, cell: dict) -> dict:
    """The DataFrame row of one run (the columns ``Session.sweep`` has always returned)."""
    out = {} if cell.get("seed") is None else {"seed": cell["seed"]}
    out.update({"allocation": cell["allocation"], "method": cell["method"], "metric": cell["metric"],
                "sparsity": cell["sparsity"], "global_sparsity": rec["global_sparsity"]})
    out.update({f"ppl_{d}": v for d, v in rec.get("perplexity", {}).items()})
    out.update({f"nll_{d}": v for d, v in rec.get("window_nll", {}).items()})
    if rec.get("zero_shot"):
        out["zero_shot_mean"] = rec["zero_shot"].get("mean_acc")
    out.update(planned=rec["planned_sparsity"], allocate_s=rec["timings_s"]["allocate"])
    return out


def expand(allocations, metrics, sparsities, seeds=None, options: dict | None = None):
    """``Session.sweep``'s cells: (cells, skipped). ``allocations`` is a list of names or a dict
    ``label -> (method, options)``; ``options`` maps a method to default options; unregistered
    methods are skipped (and listed)."""
    from prunekit.allocation.registry import methods
    options = options or {}
    variants = allocations if isinstance(allocations, dict) else {a: (a, {}) for a in allocations}
    known = methods()
    skipped = sorted({m for m, _ in variants.values() if m not in known})
    cells = [{"seed": seed, "sparsity": s, "metric": mt, "allocation": lab, "method": m,
              "options": {**options.get(m, {}), **opts}}
             for seed in (seeds if seeds is not None else [None]) for s in sparsities for mt in metrics
             for lab, (m, opts) in variants.items() if m in known]
    return cells, skipped


def iter_session(session, cells, run_kw: dict | None = None, on_run=None):
    """Run ``cells`` on one loaded ``Session`` in order, reseeding when a cell's seed changes;
    yields (cell, record, row). The in-process loop behind ``Session.sweep`` and the grid runner."""
    run_kw = run_kw or {}
    try:
        for cell in cells:
            seed = cell.get("seed")
            if seed is not None and seed != session.seed:
                session.reseed(seed)
            t0 = time.perf_counter()
            rec = session.run(cell["method"], cell["metric"], cell["sparsity"], options_=dict(cell["options"]),
                              **run_kw)
            r = row(rec, cell)
            if on_run is not None:
                on_run(rec, r)
            r["seconds"] = time.perf_counter() - t0
            yield cell, rec, r
    finally:
        session.restore()


def _run_kw(settings: dict) -> dict:
    zs = settings["zero_shot"]
    return {"evaluate": bool(settings["evaluation"]["datasets"]), "zero_shot": list(zs["tasks"]) or None,
            "zero_shot_limit": zs["limit"]}


def _session(settings: dict, progress: bool):
    from prunekit.experiments.session import Session
    c, e = settings["calibration"], settings["evaluation"]
    return Session(model_name=settings["model"], calib_dataset=c["dataset"], calib_samples=c["samples"],
                   calib_seqlen=c["seqlen"], batch_size=c["batch_size"], seed=settings["seed"],
                   eval_datasets=tuple(e["datasets"]), eval_seqlen=e["seqlen"], eval_windows=e["windows"],
                   device=settings["device"], dtype=settings["dtype"], progress=progress)


def _error(exc: BaseException) -> dict:
    msg = str(exc).strip().splitlines()
    return {"status": "error", "error": f"{type(exc).__name__}: {msg[0] if msg else ''}",
            "traceback": "".join(traceback.format_exception(exc))[-4000:]}


def run_cells(items, session=None, progress: bool = False):
    """Run (key, settings) items of one model in order on one session (loaded here unless given);
    yields ("load", seconds) after loading, then ("cell", record) per cell. A failing cell yields an
    error record and the others go on; a failing load yields an error record for every cell."""
    items = list(items)
    if not items:
        return
    if session is None:
        t0 = time.perf_counter()
        try:
            session = _session(items[0][1], progress)
        except Exception as e:  # noqa: BLE001 - recorded per cell, never stops the sweep
            err = _error(e)
            for key, st in items:
                yield "cell", {"cell": key, "settings": st, **err}
            return
        yield "load", time.perf_counter() - t0
    for key, st in items:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            (_, rec, _), = list(iter_session(session, [st], _run_kw(st)))
            rec = {**rec, "status": "ok"}
        except Exception as e:  # noqa: BLE001
            session.restore()  # run() marks the weights pruned before it touches them
            rec = _error(e)
        # process CPU time beside the wall: on a shared machine the wall measures the neighbours too
        yield "cell", {"cell": key, "settings": st, **rec, "cell_seconds": time.perf_counter() - t0,
                       "cell_cpu_seconds": time.process_time() - c0}


def _ray_group(items, threads: int | None = None):
    """Body of one Ray task: a (model, seed) group of cells; a generator, so records stream back."""
    if threads:
        import torch
        torch.set_num_threads(threads)
    yield from run_cells(items, progress=False)


# ----------------------------------------------------------------------------- results file

def read_results(path) -> list[dict]:
    """Records of a JSON-lines results file. A torn last line (a driver killed mid-write) is
    dropped from the file, so the next append starts on a clean line."""
    p = Path(path)
    if not p.exists():
        return []
    data = p.read_bytes()
    good = data.rfind(b"\n") + 1
    if good < len(data):  # torn tail: keep only whole lines
        with open(p, "r+b") as f:
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
    out = []
    for i, line in enumerate(data[:good].splitlines()):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            raise PrunekitError(f"{p}: line {i + 1} is not JSON; not a prunekit results file") from None
    return out


def _strict(o):
    """Strict-JSON form of a record (numpy / torch values to Python, NaN and inf to null)."""
    import math
    if isinstance(o, dict):
        return {str(k): _strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_strict(v) for v in o]
    if hasattr(o, "tolist"):  # numpy arrays and scalars, torch tensors
        return _strict(o.tolist())
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, (str, int, bool)) or o is None:
        return o
    return str(o)


def append_record(path, rec: dict) -> None:
    """One whole line per record with a single write, then flush + fsync: a kill loses no finished cell."""
    line = (json.dumps(_strict(rec), allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        n = os.write(fd, line)
        while n < len(line):  # os.write may be partial on some filesystems
            n += os.write(fd, line[n:])
        os.fsync(fd)
    finally:
        os.close(fd)


def comparable(rec: dict) -> dict:
    """A record without the fields that differ between two runs of the same cell (timings)."""
    return {k: v for k, v in rec.items() if k not in VOLATILE}


def frame(records: list[dict]):
    """DataFrame of records: model + ``Session.sweep``'s columns + cell, status, error."""
    import pandas as pd
    rows = []
    for rec in records:
        st = rec["settings"]
        base = {"model": st["model"]}
        if rec.get("status") == "ok":
            r = row(rec, st)
            r["seconds"] = rec.get("cell_seconds")
            r["cpu_seconds"] = rec.get("cell_cpu_seconds")
        else:
            r = {"seed": st["seed"], "allocation": st["allocation"], "method": st["method"],
                 "metric": st["metric"], "sparsity": st["sparsity"]}
        rows.append({**base, **r, "cell": rec["cell"], "status": rec.get("status"), "error": rec.get("error")})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- Ray

def ray_init(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to Ray (``address``) or start a local instance; True when this call started it.
    A local instance forwards the driver's PRUNEKIT_* / HF_* settings and prunekit's source path."""
    try:
        import ray
    except ImportError:
        raise PrunekitError("Ray is not installed; pip install 'prunekit[ray]'") from None
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    # on a loaded machine the raylet's Python agents can take longer to start than the raylet
    # waits for them by default (it then aborts with "Timed out waiting for file ...port")
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    os.environ.setdefault("RAY_agent_register_timeout_ms", "180000")
    os.environ.setdefault("RAY_worker_register_timeout_seconds", "180")
    env = {k: v for k, v in os.environ.items()
           if k.startswith(("PRUNEKIT_", "HF_")) or k in ("TOKENIZERS_PARALLELISM", "TQDM_DISABLE")}
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    for attempt in (1, 2):  # one retry: start-up can time out on a machine busy with other work
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": env})
            return True
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception on start-up timeouts
            ray.shutdown()
            if attempt == 2:
                raise PrunekitError(f"could not start a local Ray instance: {str(e).splitlines()[0]}") from e
    return True


def _ray_execute(groups, on_event, task_cpus: int = 1):
    """Submit one streaming task per group; call on_event(group_index, kind, payload) as items arrive.
    A task that dies (worker crash, OOM) yields error records for its unfinished cells."""
    import ray
    gpu = ray.cluster_resources().get("GPU", 0) >= 1
    task = ray.remote(num_cpus=1 if gpu else task_cpus, num_gpus=1 if gpu else 0, max_retries=0)(_ray_group)
    threads = None if gpu else int(os.environ.get("PRUNEKIT_THREADS") or task_cpus)
    gens = {task.remote(items, threads): gi for gi, items in enumerate(groups)}
    done = {gi: set() for gi in range(len(groups))}
    pending = list(gens)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for gen in ready:
            gi = gens[gen]
            try:
                kind, payload = ray.get(next(gen))
            except StopIteration:
                continue
            except Exception as e:  # noqa: BLE001 - the task died; its remaining cells fail
                err = _error(e)
                for key, st in groups[gi]:
                    if key not in done[gi]:
                        on_event(gi, "cell", {"cell": key, "settings": st, **err})
                continue
            if kind == "cell":
                done[gi].add(payload["cell"])
            on_event(gi, kind, payload)
            pending.append(gen)


# ----------------------------------------------------------------------------- the runner

def run_grid(grid, out=None, *, ray: bool = False, address: str | None = None, num_cpus: int | None = None,
             task_cpus: int = 1, retries: int = 0, progress: bool = True):
    """Run every cell of ``grid`` not yet in ``out`` (JSON lines); return all the grid's results as
    a DataFrame (``frame``), one row per cell in grid order; ``df.attrs``: ``model_loads``, ``ran``
    (cells computed now), ``skipped`` (cells found in ``out``), ``failed``, ``records``."""
    from prunekit.utils import tqdm
    g = load_grid(grid)
    if retries < 0:
        raise PrunekitError(f"retries must be >= 0, got {retries}")
    if out is not None:
        from prunekit.utils import check_writable
        check_writable(out)
    cv = code_version()
    cells = [(cell_key(st), st) for st in g.cells()]
    keys = {k for k, _ in cells}
    latest = {}
    for rec in read_results(out) if out is not None else []:
        if rec.get("cell") in keys and rec.get("code_version") == cv:
            latest[rec["cell"]] = rec
    # done: an ok record; a recorded failure too, unless retries ask to run it again
    skipped = {k for k, _ in cells if k in latest and (latest[k].get("status") == "ok" or retries == 0)}
    stats = {"model_loads": 0, "ran": 0, "load_s": 0.0}
    attempts = {}

    def record(rec):
        rec = {**rec, "code_version": cv, "attempt": attempts.get(rec["cell"], 0) + 1}
        attempts[rec["cell"]] = rec["attempt"]
        if out is not None:
            append_record(out, rec)
        latest[rec["cell"]] = rec
        stats["ran"] += 1

    started = False
    if ray or address:
        started = ray_init(address, num_cpus)
    try:
        for attempt in range(retries + 1):
            # first pass: every cell without a usable record; then the ones that failed in this run
            todo = [(k, st) for k, st in cells if k not in skipped and
                    (attempt == 0 or latest[k].get("status") != "ok")]
            if not todo:
                break
            bar = tqdm(total=len(todo), desc=f"sweep{'' if not attempt else f' (retry {attempt})'}",
                       unit="cell", disable=not progress)

            def on_event(kind, payload):  # a model load or a finished cell, from either runner
                if kind == "load":
                    stats["model_loads"] += 1
                    stats["load_s"] += payload
                else:
                    record(payload)
                    bar.update()

            if ray or address:
                groups = {}
                for k, st in todo:
                    groups.setdefault((st["model"], st["seed"]), []).append((k, st))
                _ray_execute(list(groups.values()), lambda gi, kind, payload: on_event(kind, payload), task_cpus)
            else:
                by_model = {}
                for k, st in todo:
                    by_model.setdefault(st["model"], []).append((k, st))
                for items in by_model.values():
                    for kind, payload in run_cells(items, progress=False):
                        on_event(kind, payload)
            bar.close()
    finally:
        if started:
            import ray as _ray
            _ray.shutdown()
    recs = [latest[k] for k, _ in cells if k in latest]
    df = frame(recs)
    df.attrs.update(model_loads=stats["model_loads"], load_s=stats["load_s"], ran=stats["ran"],
                    skipped=len(skipped), failed=[r["cell"] for r in recs if r.get("status") != "ok"],
                    records=recs)
    return df


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m prunekit.experiments.sweep")
    ap.add_argument("--write-comparison-grids", action="store_true",
                    help="regenerate prunekit/experiments/grids/comparison-*.yaml from profiles.py")
    a = ap.parse_args(argv)
    if a.write_comparison_grids:
        for p in write_comparison_grids():
            print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

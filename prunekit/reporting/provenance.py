"""Provenance: the one block that says where a result came from.

``provenance()`` is used by every report page (rendered from the results JSON it sits beside), every
notebook results JSON (``results.save_results``) and every CLI record (``--out``): date, git commit
and dirty flag (a checkout) and always the package version with a digest of its code (so an installed
copy without a git tree is traced to its code too), key package versions, the models loaded in this process (id, origin,
weights fingerprint, device, dtype), profile, and the command line or notebook parameters.
"""
from __future__ import annotations

import datetime as _dt
import functools
import html
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from prunekit.utils import source_digest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("prunekit", "torch", "transformers", "accelerate", "datasets", "lm_eval", "numpy", "safetensors",
            "gguf")
PARAMETERS_ENV = "PRUNEKIT_NOTEBOOK_PARAMETERS"  # set by the report renderer for the kernel
REQUIRED = ("created", "git", "code", "versions", "models", "device", "dtype", "profile", "argv", "parameters")


def git_state(root: Path = ROOT) -> dict | None:
    """{"commit", "dirty"} of the checkout prunekit runs from; None outside a git checkout."""
    if not (root / ".git").exists():
        return None
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,  # noqa: E731
                                        timeout=10, check=True).stdout
        commit = run("rev-parse", "HEAD").strip()
        dirty = bool(run("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


@functools.lru_cache(maxsize=1)
def code_digest(package_dir: Path = ROOT / "prunekit") -> str:
    """sha256 over the package's Python sources (``utils.source_digest``): equal for a checkout and
    any install of the same code."""
    return source_digest(package_dir)


def code_state() -> dict:
    """{"version", "digest"} of the prunekit that runs (see ``code_digest``)."""
    import prunekit
    return {"version": prunekit.__version__, "digest": code_digest(Path(prunekit.__file__).resolve().parent)}


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def notebook_parameters() -> dict | None:
    raw = os.environ.get(PARAMETERS_ENV)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def model_entry(m) -> dict:
    """A model's provenance entry from a Runtime or Session (their ``provenance()``), a run record
    (its ``model_provenance``) or an entry dict."""
    if isinstance(m, dict):
        return dict(m.get("model_provenance") or m)
    return dict(m.provenance())


def provenance(models=None, profile: str | None = None, parameters: dict | None = None,
               argv: list[str] | None = None) -> dict:
    """The provenance block. ``models``: the runtimes, sessions or provenance dicts the result was
    computed on (nothing is remembered behind the caller's back); ``parameters`` defaults to the
    notebook parameters the renderer passed (None elsewhere); ``argv`` to ``sys.argv`` outside a
    notebook kernel."""
    models = [model_entry(m) for m in (models or [])]
    models = list({(m["id"], m.get("fingerprint")): m for m in models}.values())  # reloads listed once
    params = notebook_parameters() if parameters is None else parameters
    if profile is None and params:
        profile = params.get("profile")
    in_kernel = "ipykernel" in sys.modules
    if argv is None and not in_kernel:
        argv = list(sys.argv)
    try:
        import torch
        cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - provenance never fails a run
        cuda = None
    one = lambda k: (sorted({m[k] for m in models})[0] if len({m[k] for m in models}) == 1  # noqa: E731
                     else ",".join(sorted({m[k] for m in models})) or None) if models else None
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_state(),
        "code": code_state(),
        "versions": package_versions(),
        "models": models,
        "device": one("device"),
        "dtype": one("dtype"),
        "gpu": cuda,
        "host": {"platform": platform.platform(terse=True), "cpus": os.cpu_count()},
        "profile": profile,
        "argv": argv,
        "parameters": params,
    }


def to_html(prov: dict) -> str:
    """A compact table for the top of a report page."""
    g = prov.get("git")
    git = "not a git checkout" if not g else f"{g['commit'][:12]}{' (dirty)' if g['dirty'] else ''}"
    c = prov.get("code") or {}
    models = "; ".join(f"{m['id']} — {m.get('origin', '')} (weights {m.get('fingerprint', '?')}, "
                       f"{m.get('device')}, {m.get('dtype')})" for m in prov.get("models") or []) or "none loaded"
    vers = ", ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items())
    rows = [("created", prov.get("created")), ("git commit", git),
            ("code", f"prunekit {c.get('version')}, sha256 {str(c.get('digest'))[:12]}" if c else "n/a"), ("models", models),
            ("device / dtype", f"{prov.get('device')} / {prov.get('dtype')}" + (f" ({prov['gpu']})" if prov.get("gpu") else "")),
            ("profile", prov.get("profile")), ("versions", vers)]
    if prov.get("parameters"):
        rows.append(("parameters", json.dumps(prov["parameters"], sort_keys=True)))
    if prov.get("argv"):
        rows.append(("command", " ".join(prov["argv"])))
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return ("<details class='prunekit-provenance' open><summary><b>Provenance</b></summary>"
            "<table style='font-size:0.85em;border-collapse:collapse;margin:0.5em 0'>" + cells + "</table></details>")

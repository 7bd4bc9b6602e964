"""Colab cells of the notebooks, generated from one source: ``python -m prunekit.reporting.colab``.

The repository URL lives only in ``pyproject.toml`` (``[project.urls] Repository``). Every notebook
gets, from it, an "Open in Colab" badge under its first heading and an install cell right after its
``parameters`` cell that runs only on Colab: it clones the repository, installs prunekit with
``requirements.txt`` as pip *constraints* (the tested pins; torch is not pinned there, so Colab's
CUDA torch stays) and, with ``--no-deps``, exactly the model packages the notebook's profiles load
(``prunekit.core.aliases.ALIAS_PACKAGES``). ``--check`` exits 1 when a notebook is out of date
(tests/test_colab.py runs the same check).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ("quick", "cpu", "paper")
INSTALL_MARK = "# On Colab only"
BADGE_IMG = "https://colab.research.google.com/assets/colab-badge.svg"
_BADGE_RE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
CLONE_DIR = "/content/prunekit"


def repository_url(root: Path = ROOT) -> str:
    import tomllib
    with open(root / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["urls"]["Repository"].rstrip("/")


def badge(url: str, notebook: str) -> str:
    owner_repo = url.split("github.com/", 1)[1]
    return f"[![Open In Colab]({BADGE_IMG})](https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{notebook})"


def parameters(nb) -> dict:
    """The values of the notebook's ``parameters`` cell (plain assignments)."""
    cell = next(c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", []))
    ns: dict = {}
    exec(compile(cell.source, "<parameters>", "exec"), {}, ns)
    return ns


# the profile table each two-family notebook reads its ``models`` default from (experiments/profiles.py)
MODEL_TABLES = {"21": "MRP_SELECTION", "30": "SVNUP", "40": "ABSORPTION", "50": "COMPARISON"}


def models_per_profile(nb_path: Path) -> dict[str, list[str]]:
    """The models each profile of a notebook loads, from its parameters: ``model`` (None: the
    default model), ``extra_models`` outside quick (20), and ``models`` (None: the notebook's
    profile table in ``MODEL_TABLES``, its first entry replaced by ``model``)."""
    import nbformat
    from prunekit.core.aliases import DEFAULT_MODEL
    from prunekit.experiments import profiles
    p = parameters(nbformat.read(nb_path, as_version=4))
    table = MODEL_TABLES.get(nb_path.name[:2])
    out = {}
    for prof in PROFILES:
        model = p.get("model") or DEFAULT_MODEL
        models = [model]
        if "extra_models" in p and prof != "quick":
            models += list(p["extra_models"])
        if "models" in p:
            if p["models"]:
                models = list(p["models"])
            elif table is not None:
                models = [model] + list(getattr(profiles, table)[prof]["models"])[1:]
        out[prof] = list(dict.fromkeys(models))
    return out


def model_packages(models) -> list[str]:
    from prunekit.core.aliases import ALIAS_PACKAGES
    pkgs: list[str] = []
    for m in models:
        pkgs += [p for p in ALIAS_PACKAGES.get(m, ()) if p not in pkgs]
    return pkgs


def install_source(url: str, packages: list[str]) -> str:
    lines = [
        f"{INSTALL_MARK} (no-op elsewhere): prunekit with the tested pins of requirements.txt as constraints",
        "# (Colab's CUDA torch is kept) and the model packages this notebook's profiles load.",
        "# Generated from pyproject.toml by `python -m prunekit.reporting.colab`.",
        "import sys",
        'if "google.colab" in sys.modules:',
        f'    get_ipython().system("[ -d {CLONE_DIR} ] || git clone -q --depth 1 {url} {CLONE_DIR}")',
        f"    get_ipython().system(\"pip install -q -c {CLONE_DIR}/requirements.txt '{CLONE_DIR}[eval]'\")",
    ]
    if packages:
        lines.append(f'    get_ipython().system("pip install -q --no-deps {" ".join(packages)}")')
    return "\n".join(lines)


def sync(nb_path: Path, url: str | None = None, write: bool = True) -> bool:
    """Bring the badge and install cell of one notebook up to date; True if it changed."""
    import nbformat
    from prunekit.utils import atomic_write_text
    url = url or repository_url()
    nb = nbformat.read(nb_path, as_version=4)
    before = nbformat.writes(nb)
    head = next(c for c in nb.cells if c.cell_type == "markdown")
    want = badge(url, nb_path.name)
    if _BADGE_RE.search(head.source):
        head.source = _BADGE_RE.sub(lambda _: want, head.source, count=1)
    else:
        first, _, rest = head.source.partition("\n")
        head.source = f"{first}\n{want}\n{rest}" if rest else f"{first}\n{want}"
    pkgs = model_packages(sorted({m for ms in models_per_profile(nb_path).values() for m in ms},
                                 key=lambda m: (m != "smollm2-135m", m)))
    src = install_source(url, pkgs)
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.lstrip().startswith(INSTALL_MARK)]
    if cells:
        cells[0].source = src
    else:
        i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        nb.cells.insert(i + 1, nbformat.v4.new_code_cell(src))
    after = nbformat.writes(nb)
    if after != before and write:
        atomic_write_text(nb_path, after + "\n")
    return after != before


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunekit.reporting.colab", description=__doc__.split("\n")[0])
    ap.add_argument("--notebooks", default=str(ROOT / "notebooks"))
    ap.add_argument("--check", action="store_true", help="only report notebooks that are out of date (exit 1)")
    a = ap.parse_args(argv)
    url = repository_url()
    stale = []
    for nb in sorted(Path(a.notebooks).glob("[0-9][0-9]_*.ipynb")):
        if sync(nb, url, write=not a.check):
            stale.append(nb.name)
            print(("out of date " if a.check else "updated ") + nb.name)
    return 1 if (a.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())

"""JupyterLab in a real browser: open 00_quickstart, run every cell on ``tiny-llama``, look at it.

JupyterLab is started the way users start it, ``make lab`` (free port, random token, throw-away
config/settings dirs through LAB_ARGS and the environment; ``-o`` the setup stamp so make never
reinstalls), serving a copy of the notebook whose ``model`` parameter is overridden papermill-style
(an injected cell after the ``parameters`` cell, exactly what ``papermill -p model tiny-llama`` does).
Debian's Chromium, driven by Playwright's Python API, opens it, clicks Run → Run All Cells, waits
for every code cell to get its execution count, and checks what a person would see: no error
output, a figure (an ``<img>`` in an output area) and the progress bars as rendered widgets that
reach 100 % (with the widget extension missing they stay "0%" text). The screenshot's path is printed (``pytest -s`` / ``-rP`` shows it;
``PRUNEKIT_SCREENSHOT=path`` copies it there). Skips cleanly when Chromium or Playwright is
missing; ``.ci/run`` installs Chromium so CI runs it. Playwright never downloads a browser here.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("PRUNEKIT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # uses the real model cache: tiny-llama borrows SmolLM2's tokenizer
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} absent (apt-get install chromium)"),
    pytest.mark.skipif(not os.environ.get("PRUNEKIT_DATA_DIR"), reason="PRUNEKIT_DATA_DIR not set"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parameterised_copy(src: Path, dst: Path, **params) -> Path:
    """The notebook with papermill's injected-parameters cell (outputs stay stripped)."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook
    nb = parameterize_notebook(load_notebook_node(str(src)), params)
    nbformat.write(nb, dst)
    return dst


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"jupyter lab did not answer {url} in {timeout:.0f} s")


@pytest.fixture
def lab_server(tmp_path):
    """A JupyterLab server rooted at ``tmp_path/nb``; yields (base_url, token, root); stops it."""
    pytest.importorskip("jupyterlab")
    root = tmp_path / "nb"
    root.mkdir()
    cfg = tmp_path / "jupyter"
    # no news / update pop-ups over the notebook
    notif = cfg / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notif.parent.mkdir(parents=True)
    notif.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # render every cell (JupyterLab 4 virtualises long notebooks: off-screen cells are not in the DOM)
    tracker = cfg / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    # and start the notebook's kernel without asking (no "Select Kernel" dialog)
    tracker.write_text(json.dumps({"windowingMode": "none", "autoStartDefaultKernel": True}))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ,
           "JUPYTER_CONFIG_DIR": str(cfg / "config"), "JUPYTER_RUNTIME_DIR": str(cfg / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(cfg / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(cfg / "ws"),
           # the kernel inherits these: this checkout's prunekit, results JSON out of reports/
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PRUNEKIT_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    log_path = tmp_path / "jupyterlab.log"
    log = open(log_path, "w")
    venv = Path(sys.prefix)  # the venv running the tests (`make test`: .venv); -o: never rebuilt here
    lab_args = " ".join(["--no-browser", "--ip=127.0.0.1", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
                         f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--LabApp.expose_app_in_browser=True",
                         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"])
    proc = subprocess.Popen(
        ["make", "-C", str(ROOT), "lab", f"VENV={venv}", "-o", f"{venv}/.prunekit-installed", f"LAB_PORT={port}",
         f"LAB_REPORTS={tmp_path / 'results'}", f"LAB_ARGS={lab_args}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/api/status?token={token}", proc, log_path)
        yield base, token, root
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make, its shell and jupyter (which stops its kernels)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_quickstart_runs_in_jupyterlab(lab_server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    base, token, root = lab_server
    name = "00_quickstart.ipynb"
    _parameterised_copy(ROOT / "notebooks" / name, root / name, model="tiny-llama")
    shot = tmp_path / "jupyterlab-00_quickstart.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{base}/lab/tree/{name}?token={token}")
            nb = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
            nb.wait_for()
            # the kernel is ready: connected and idle (the toolbar shows "idle" before it connects)
            page.wait_for_function(
                """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                           const k = w && w.sessionContext && w.sessionContext.session
                                     && w.sessionContext.session.kernel;
                           return !!k && k.connectionStatus === 'connected' && k.status === 'idle'; }""")
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            n_code = sum(c["cell_type"] == "code" for c in json.loads((root / name).read_text())["cells"])
            assert nb.locator(".jp-CodeCell").count() == n_code
            # done when every code cell shows [n] (not [ ] or [*]); the tiny model takes seconds
            page.wait_for_function(
                """(sel) => { const ps = [...document.querySelectorAll(sel)];
                              return ps.length > 0 && ps.every(p => /\\[\\d+\\]/.test(p.textContent)); }""",
                arg=".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt",
                timeout=100_000)
            errors = nb.locator("[data-mime-type='application/vnd.jupyter.error']")
            error_text = "\n".join(errors.all_inner_texts())
            stderr = "\n".join(nb.locator("[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts())
            # the progress bars are widgets (ipywidgets + the Lab extension) and finished at 100 %
            bar_widths = page.evaluate(  # ipywidgets' progress bar: div.progress-bar, width = value / max
                """(sel) => [...document.querySelectorAll(sel)].map(f => parseFloat(f.style.width || '0'))""",
                ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output .progress-bar")
            widget_text = "\n".join(nb.locator(".jp-OutputArea-output").all_inner_texts())
            figures = nb.locator(".jp-OutputArea-output img")
            n_fig = figures.count()
            if n_fig:
                figures.last.scroll_into_view_if_needed()
        finally:
            page.screenshot(path=str(shot))  # also on failure: what the browser showed
            browser.close()
    print(f"\nJupyterLab screenshot: {shot}")
    if os.environ.get("PRUNEKIT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["PRUNEKIT_SCREENSHOT"])
    assert error_text == "", f"error output in the notebook:\n{error_text}"
    assert "Traceback" not in stderr and "TqdmWarning" not in stderr, stderr
    assert n_fig >= 1, "no figure rendered"
    assert bar_widths and max(bar_widths) == 100.0, (
        f"no progress widget reached 100 % (widths {bar_widths}); outputs:\n{widget_text[-1500:]}")
    saved = json.loads((tmp_path / "results" / "00_quickstart.json").read_text())
    assert saved["summary"].startswith("dense ppl"), saved  # the last cell ran and saved its results

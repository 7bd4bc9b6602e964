"""``prunekit sweep`` and its progress bars, through the real entry point with stderr a pipe (a log
file, CI) or a terminal (a pseudo-terminal): ``--quiet`` prints no bar anywhere, not even with
PRUNEKIT_PROGRESS=1 on a terminal; without it, bars appear only on a terminal or when forced."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_data

ROOT = Path(__file__).resolve().parents[1]
BAR = re.compile(r"it/s|s/it|cell/s|s/cell|\d+%\||[█▏▎▍▌▋▊▉]")  # tqdm's rate, percentage bar and blocks

pytestmark = needs_data


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A one-cell grid on a tiny LLaMA with a byte tokenizer (a few seconds per sweep)."""
    from conftest import hf_byte_tokenizer, tiny_model
    root = tmp_path_factory.mktemp("progress")
    tok = hf_byte_tokenizer()
    tiny_model(layers=2, vocab=len(tok)).save_pretrained(root / "m", safe_serialization=True)
    tok.save_pretrained(root / "m")
    g = root / "g.yaml"
    g.write_text(f"models: ['{root / 'm'}']\nallocations: [uniform]\nmetrics: [magnitude]\n"
                 "calibration: {samples: 2, seqlen: 32}\nevaluation: {seqlen: 64, windows: 1}\n")
    return g


def _sweep(grid: Path, out: Path, *flags: str, tty: bool, env: dict | None = None) -> tuple[int, str]:
    """Run ``prunekit sweep`` in a child process; stderr is a pipe or the slave side of a pty."""
    argv = [sys.executable, "-m", "prunekit.cli", "sweep", str(grid), "--out", str(out), *flags]
    full_env = {**os.environ, "PRUNEKIT_THREADS": "1", **(env or {})}
    for var in ("TQDM_DISABLE", "PRUNEKIT_PROGRESS"):
        if var not in (env or {}):
            full_env.pop(var, None)
    if not tty:
        r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=600)
        return r.returncode, r.stderr
    import fcntl
    import pty
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 0-column terminal shows no bar
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL, cwd=ROOT,
                         env=full_env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return p.wait(timeout=600), b"".join(chunks).decode("utf-8", "replace")


def test_quiet_prints_no_bar_even_on_a_terminal_and_when_forced(grid, tmp_path):
    code, err = _sweep(grid, tmp_path / "r.jsonl", "--quiet", tty=True, env={"PRUNEKIT_PROGRESS": "1"})
    assert code == 0, err
    assert not BAR.search(err), err


def test_no_bar_when_stderr_is_not_a_terminal(grid, tmp_path):
    code, err = _sweep(grid, tmp_path / "r.jsonl", tty=False)
    assert code == 0, err
    assert not BAR.search(err), err


def test_bar_on_a_terminal_and_when_forced(grid, tmp_path):
    """The other side of the policy (and proof that the pattern sees a bar when there is one)."""
    code, err = _sweep(grid, tmp_path / "a.jsonl", tty=True)
    assert code == 0, err
    assert "sweep" in err and BAR.search(err), err
    code, err = _sweep(grid, tmp_path / "b.jsonl", tty=False, env={"PRUNEKIT_PROGRESS": "1"})
    assert code == 0, err
    assert "sweep" in err and BAR.search(err), err

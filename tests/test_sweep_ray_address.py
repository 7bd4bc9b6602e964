"""``--ray-address HOST:PORT`` must be a Ray head: a TCP connection within 5 s, then a gRPC
(HTTP/2) answer to the HTTP/2 preface within 5 s. A port where something else listens (a silent
socket, an HTTP/1 server) is refused with one line and exit 2 before any cell, instead of ~25 s
of Ray's retries with C++ warnings on stderr; the report renderer uses the same check."""
from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_cli_bad_input import model_dir, tripwire  # noqa: F401

from prunekit.errors import PrunekitError
from prunekit.experiments.sweep.runners import ADDRESS_TIMEOUT_S, check_address

ROOT = Path(__file__).resolve().parents[1]


def _serve(handle) -> tuple[int, socket.socket]:
    """A listening socket on a free local port; ``handle(conn)`` runs per accepted connection."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def loop():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    return srv.getsockname()[1], srv


@pytest.fixture
def silent():
    """Accepts, reads, never answers (the connection stays open)."""
    held = []

    def handle(conn):
        held.append(conn)
        try:
            while conn.recv(1024):
                pass
        except OSError:
            pass
    port, srv = _serve(handle)
    yield port
    srv.close()
    for c in held:
        c.close()


@pytest.fixture
def http1():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    srv.RequestHandlerClass.log_message = lambda *a, **k: None
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _http2_like(first_frame: bytes):
    """A server that reads the client preface, then sends ``first_frame`` (a gRPC server sends a
    SETTINGS frame: length, type 4, flags, stream 0)."""
    def handle(conn):
        got = b""
        while len(got) < 24:
            chunk = conn.recv(1024)
            if not chunk:
                break
            got += chunk
        if got.startswith(b"PRI * HTTP/2.0"):
            conn.sendall(first_frame)
        time.sleep(0.5)
        conn.close()
    port, srv = _serve(handle)
    return port, srv


SETTINGS = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\x00\x03\x00\x00\x00\x64"  # MAX_CONCURRENT_STREAMS 100


def test_http2_settings_answer_is_accepted():
    port, srv = _http2_like(SETTINGS)
    try:
        t0 = time.monotonic()
        check_address(f"127.0.0.1:{port}")
        assert time.monotonic() - t0 < 2
    finally:
        srv.close()


def test_other_http2_frames_are_refused():
    port, srv = _http2_like(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + bytes(8))  # GOAWAY first: not a server preface
    try:
        with pytest.raises(PrunekitError, match="is not a Ray head"):
            check_address(f"127.0.0.1:{port}", timeout=2)
    finally:
        srv.close()


def test_silent_socket_refused_within_the_timeout(silent):
    t0 = time.monotonic()
    with pytest.raises(PrunekitError, match=r"is not a Ray head \(no gRPC answer within 1 s\)"):
        check_address(f"127.0.0.1:{silent}", timeout=1)
    assert time.monotonic() - t0 < 3


def test_http1_server_refused_at_once(http1):
    t0 = time.monotonic()
    with pytest.raises(PrunekitError, match=r"is not a Ray head \(it answered '.+', not gRPC\)"):
        check_address(f"127.0.0.1:{http1}")
    assert time.monotonic() - t0 < 2


def test_tls_cluster_is_left_to_ray(http1, monkeypatch):
    """With RAY_USE_TLS the preface cannot be checked in clear text: the TCP check only."""
    monkeypatch.setenv("RAY_USE_TLS", "1")
    check_address(f"127.0.0.1:{http1}")


def _grid(tmp_path: Path, model: Path) -> Path:
    g = tmp_path / "g.yaml"
    g.write_text(f"models: ['{model}']\nallocations: [uniform]\nmetrics: [magnitude]\n"
                 "calibration: {samples: 2, seqlen: 32}\nevaluation: {seqlen: 64, windows: 1}\n")
    return g


@pytest.mark.parametrize("server", ["silent", "http1"])
def test_sweep_refuses_a_port_that_is_no_ray_head(server, request, tmp_path, model_dir):  # noqa: F811
    """The real entry point in a child process (Ray's C++ retry loop would ignore an alarm): exit 2,
    exactly one line on stderr (no Ray warnings), no results file, within the stated bound."""
    port = request.getfixturevalue(server)
    out = tmp_path / "r.jsonl"
    argv = ["sweep", str(_grid(tmp_path, model_dir)), "--out", str(out), "--ray-address", f"127.0.0.1:{port}"]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "prunekit.cli", *argv], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    wall = time.monotonic() - t0
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "is not a Ray head" in r.stderr, r.stderr
    assert not out.exists()
    # the interpreter's start-up and imports, then at most the two 5 s waits
    assert wall < 2 * ADDRESS_TIMEOUT_S + 30, wall


def test_report_renderer_uses_the_same_check(http1, capsys, tmp_path, monkeypatch):
    """``python -m prunekit.reporting --ray-address`` refuses before any notebook renders."""
    import prunekit.reporting.render as R

    def boom(*a, **k):
        raise AssertionError("a notebook was rendered")
    monkeypatch.setattr(R, "render", boom)
    monkeypatch.setattr(R, "render_ray", boom)
    nbs = ROOT / "notebooks"
    code = R.main(["--notebooks", str(nbs), "--only", "00", "--out", str(tmp_path / "reports"),
                   "--ray-address", f"127.0.0.1:{http1}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "is not a Ray head" in err, err
    assert not (tmp_path / "reports").exists()

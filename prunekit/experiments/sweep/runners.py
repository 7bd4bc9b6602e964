"""Sweep runners: the grid's cells in-process (one model load per model, its seeds walked with
``Session.reseed``) or as Ray tasks (one per (model, seed) group), resuming from the results file."""
from __future__ import annotations

import contextlib
import os
import socket
import time
import traceback
from pathlib import Path

from prunekit.errors import PrunekitError
from prunekit.experiments.cells import iter_session
from prunekit.experiments.sweep.grid import check_cells, load_grid
from prunekit.experiments.sweep.store import (ResultsLock, append_record, cell_key, code_version, frame,
                                              read_results, repair_tail)

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


ADDRESS_TIMEOUT_S = 5.0   # for the TCP connection, then again for the gRPC (HTTP/2) answer
# the HTTP/2 client connection preface, then an empty SETTINGS frame (length 0, type 4, flags 0, stream 0)
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def speaks_http2(sock: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """Send the HTTP/2 client preface (and an empty SETTINGS frame) on a connected socket and wait up
    to ``timeout`` s for the server's first frame: an HTTP/2 server (Ray's GCS is a gRPC server)
    answers with a SETTINGS frame (type 4, stream 0). Returns (True, header) for that, else (False,
    what arrived: an HTTP/1 error line, nothing before EOF, or b"" after the timeout)."""
    import time
    deadline = time.monotonic() + timeout
    sock.sendall(HTTP2_PREFACE)
    got = b""
    while len(got) < 9:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(9 - len(got))
        except (TimeoutError, socket.timeout):
            break
        except OSError:  # reset by a peer that does not speak HTTP/2
            break
        if not chunk:
            break
        got += chunk
    ok = len(got) == 9 and got[3] == 0x04 and int.from_bytes(got[5:9], "big") & 0x7FFFFFFF == 0
    return ok, got


def check_address(address: str, timeout: float = ADDRESS_TIMEOUT_S) -> None:
    """A ``host:port`` Ray address must accept a TCP connection within ``timeout`` seconds and then
    answer the HTTP/2 preface as a gRPC server does (Ray's GCS), within ``timeout`` seconds again:
    ``ray.init`` would otherwise retry for minutes against a closed port, and for ~25 s (with C++
    warnings) against a port where something else listens. ``auto`` and ``ray://`` addresses are
    left to Ray, and so is a cluster with TLS on (``RAY_USE_TLS``: the preface check cannot see
    through TLS)."""
    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PrunekitError(f"--ray-address {address!r}: expected HOST:PORT, auto or ray://HOST:PORT")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as e:
        raise PrunekitError(f"--ray-address {address}: no Ray head answers there within {timeout:g} s "
                            f"({e.strerror or type(e).__name__})") from None
    if os.environ.get("RAY_USE_TLS", "").strip().lower() in ("1", "true", "yes", "on"):
        sock.close()
        return
    try:
        ok, got = speaks_http2(sock, timeout)
    except OSError:
        ok, got = False, b""
    finally:
        sock.close()
    if not ok:
        why = (f"it answered {got.decode('latin-1')!r}, not gRPC" if got else f"no gRPC answer within {timeout:g} s")
        raise PrunekitError(f"--ray-address {address} is not a Ray head ({why})")


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
        check_address(address)
        import logging
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # the driver's retry chatter
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, TimeoutError, RuntimeError) as e:
            ray.shutdown()
            raise PrunekitError(f"--ray-address {address}: cannot connect to a Ray cluster there "
                                f"({(str(e).strip().splitlines() or [''])[0]})") from None
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
        check_writable(out, "results file")
        read_results(out)  # read-only: refuse a file that is not ours before anything touches it
    check_cells(g)  # the grid's models, devices, sequence lengths and data, before the first cell
    lock = ResultsLock(out) if out is not None else contextlib.nullcontext()
    with lock:
        if out is not None:
            repair_tail(out)
        return _run_locked(g, out, ray, address, num_cpus, task_cpus, retries, progress, tqdm)


def _run_locked(g, out, ray, address, num_cpus, task_cpus, retries, progress, tqdm):
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

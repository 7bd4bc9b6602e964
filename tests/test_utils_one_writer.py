"""Every file prunekit writes goes through the one writer (``utils.atomic_write_with``): the cache
manifest, token arrays, statistics, offloaded blocks, snapshot copies and the saved model's
portable configs. A symlink planted at the predictable staging names older prunekit used
(``<name>.<pid>.tmp``, ``.<name>.tmp-<pid>-``) is never written through, and one at the target is
refused (a warning for the caches), never followed."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch

from prunekit.errors import PrunekitError

pytestmark = pytest.mark.usefixtures("one_thread")

PID = os.getpid()


def _precious(tmp_path: Path) -> Path:
    p = tmp_path / "outside" / "precious.txt"
    p.parent.mkdir(exist_ok=True)
    p.write_text("the user's own bytes")
    return p


def _untouched(precious: Path, *links: Path) -> None:
    assert precious.read_text() == "the user's own bytes"
    for link in links:
        assert link.is_symlink() and os.readlink(link) == str(precious)


# ----------------------------------------------------------------------------- the writer itself

def test_write_safetensors_round_trips():
    """The streaming safetensors writer gives what safetensors itself reads back, bit for bit."""
    from safetensors.torch import load, save

    from prunekit.utils import write_safetensors
    ts = {"w": torch.randn(3, 4), "h": torch.randn(5).to(torch.bfloat16), "m": torch.tensor([True, False]),
          "i": torch.arange(7), "e": torch.zeros(0, 3), "s": torch.tensor(2.5, dtype=torch.float16),
          "strided": torch.randn(4, 6)[:, ::2]}
    buf = io.BytesIO()
    write_safetensors(buf, ts, {"key": "k"})
    got = load(buf.getvalue())
    assert set(got) == set(ts) and all(torch.equal(got[k], ts[k]) for k in ts)
    assert len(buf.getvalue()) == len(save({k: v.contiguous() for k, v in ts.items()}, {"key": "k"}))
    n = int.from_bytes(buf.getvalue()[:8], "little")
    assert n % 8 == 0  # the data starts 8-aligned, and each tensor at a multiple of its element size
    header = json.loads(buf.getvalue()[8:8 + n])
    assert all(v["data_offsets"][0] % ts[k].element_size() == 0 for k, v in header.items() if k != "__metadata__")


def test_failed_callback_leaves_nothing(tmp_path):
    from prunekit.utils import atomic_write_with

    def half(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        atomic_write_with(tmp_path / "x.bin", half)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- caches

def test_cache_manifest(tmp_path):
    from prunekit.core import cache
    d = tmp_path / "entry"
    d.mkdir()
    (d / "w.bin").write_bytes(b"x" * 10)
    precious = _precious(tmp_path)
    old = d / f".{cache.MANIFEST}.tmp-{PID}-"
    os.symlink(precious, old)
    cache.seal_dir(d, {"id": 1})
    _untouched(precious, old)
    assert cache.verify_dir(d, {"id": 1}) is None
    os.unlink(d / cache.MANIFEST)
    os.symlink(precious, d / cache.MANIFEST)
    with pytest.raises(PrunekitError, match="not a regular file"):
        cache.seal_dir(d, {"id": 1})
    _untouched(precious, d / cache.MANIFEST)


def test_token_arrays(tmp_path):
    import numpy as np

    from prunekit.core import cache
    path = tmp_path / "tokens" / "wikitext2-test.npz"
    path.parent.mkdir()
    precious = _precious(tmp_path)
    old = path.with_name(f".{path.name}.tmp-{PID}-.npz")
    os.symlink(precious, old)
    cache.save_arrays(path, {"ids": np.arange(5)}, {"d": "w"})
    _untouched(precious, old)
    assert list(cache.load_arrays(path, {"d": "w"})["ids"]) == [0, 1, 2, 3, 4]
    path.unlink()
    os.symlink(precious, path)
    with pytest.warns(cache.CacheWarning, match="without caching"):
        cache.save_arrays(path, {"ids": np.arange(5)}, {"d": "w"})
    _untouched(precious, path)


def test_statistics_cache(tmp_path):
    from prunekit.core import cache
    from prunekit.scoring.statistics import StatsCache
    sc = StatsCache(tmp_path / "stats")
    sc.root.mkdir()
    p = sc.path("k")
    precious = _precious(tmp_path)
    old = p.with_name(f".{p.name}.tmp-{PID}-")
    os.symlink(precious, old)
    sc.save("k", {"a": torch.arange(4.0)})
    _untouched(precious, old)
    assert torch.equal(sc.load("k")["a"], torch.arange(4.0))
    p.unlink()
    os.symlink(precious, p)
    with pytest.warns(cache.CacheWarning, match="without caching"):
        sc.save("k", {"a": torch.arange(4.0)})
    _untouched(precious, p)


def test_discard_name_is_unpredictable(tmp_path):
    """A bad entry is moved aside under a fresh name: a file planted at the old fixed
    ``.<name>.tmp-<pid>-discard`` is neither replaced nor deleted."""
    from prunekit.core import cache
    entry = tmp_path / "e.npz"
    entry.write_bytes(b"bad")
    planted = tmp_path / f".e.npz.tmp-{PID}-discard"
    planted.write_text("keep")
    cache.discard(entry)
    assert not entry.exists() and planted.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == [planted.name]


# ----------------------------------------------------------------------------- offload and snapshot files

def test_offloaded_block_write(tmp_path, monkeypatch):
    from conftest import tiny_model

    from prunekit.core.runtime import Runtime
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    rt = Runtime.of(tiny_model(layers=2))
    off = rt.offload("disk")
    precious = _precious(tmp_path)
    nxt = off.work_dir / f"block0000-{off.writes + 1}.safetensors"
    old = nxt.with_suffix(f".{PID}.tmp")
    os.symlink(precious, old)
    with rt.onload(0, write=True):
        lin = rt.layout.linears(0)["self_attn.q_proj"]
        lin.weight.data.zero_()
    _untouched(precious, old)
    assert nxt.is_file() and not nxt.is_symlink()
    with rt.onload(0):
        assert not rt.layout.linears(0)["self_attn.q_proj"].weight.any()
    os.symlink(precious, off.work_dir / f"block0000-{off.writes + 1}.safetensors")
    with pytest.raises(PrunekitError, match="not a regular file"):
        with rt.onload(0, write=True):
            pass
    _untouched(precious)


def test_snapshot_disk_copy(tmp_path):
    from conftest import tiny_model

    from prunekit.core.runtime import Runtime
    from prunekit.core.snapshot import weight_snapshot
    rt = Runtime.of(tiny_model(layers=2))
    before = rt.layout.linears(1)["mlp.up_proj"].weight.detach().clone()
    snap = weight_snapshot(rt, "disk")
    snap._dir = tmp_path / "snapdir"  # the snapshot's private directory, known in advance here
    snap._dir.mkdir()
    precious = _precious(tmp_path)
    old = (snap._dir / "snap-block0001.safetensors").with_suffix(f".{PID}.tmp")
    os.symlink(precious, old)
    with snap:
        with snap.modify(1) as block:
            block.mlp.up_proj.weight.data.zero_()
        _untouched(precious, old)
    assert torch.equal(rt.layout.linears(1)["mlp.up_proj"].weight, before)


def test_portable_config_rewrite_never_follows_a_symlink(tmp_path):
    from prunekit.portable import make_portable
    d = tmp_path / "saved"
    d.mkdir()
    precious = tmp_path / "tok.json"
    precious.write_text(json.dumps({"tokenizer_class": "TokenizersBackend"}))
    os.symlink(precious, d / "tokenizer_config.json")
    with pytest.raises(PrunekitError, match="not a regular file"):
        make_portable(d)
    assert json.loads(precious.read_text()) == {"tokenizer_class": "TokenizersBackend"}

"""Verified caches: every kind of cache entry (model directory, token arrays, statistics) carries a
manifest; a flipped byte, a truncation or a swapped entry is detected (CacheWarning), rebuilt, and
gives the same numbers as a clean run. Staging left by a killed writer is removed on the next run."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import ByteTokenizer, tiny_calib, tiny_model

from prunekit.core.cache import CacheWarning
from prunekit.core.runtime import Runtime

pytestmark = pytest.mark.usefixtures("one_thread")

USER_CACHE = Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit"))
DAMAGES = ["flip", "truncate", "swap"]


def flip(path: Path, offset: int = -1) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------- token arrays

@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    d = tmp_path / "data"
    (d / "wikitext-2-raw").mkdir(parents=True)
    (d / "ptb").mkdir()
    (d / "wikitext-2-raw" / "wiki.test.raw").write_text("= Title =\n" + "".join(f"wiki text line {i}\n" for i in range(50)))
    (d / "ptb" / "ptb.test.txt").write_text("".join(f"ptb sentence number {i}\n" for i in range(80)))
    monkeypatch.setenv("PRUNEKIT_DATA_DIR", str(d))
    return d


def tokens(name="wikitext2"):
    from prunekit.core.data import token_stream
    ids, _ = token_stream(name, "test", ByteTokenizer())
    return ids


@pytest.mark.parametrize("damage", DAMAGES + ["tamper"])
def test_token_cache_entry_damage_is_detected_and_rebuilt(data_dir, damage, recwarn):
    from prunekit.core.cache import cache_dir
    ref = tokens().clone()
    ptb_ref = tokens("ptb").clone()
    folder = cache_dir() / "tokens"
    wiki = next(folder.glob("wikitext2-test-*.npz"))
    ptb = next(folder.glob("ptb-test-*.npz"))
    if damage == "flip":
        flip(wiki, len(wiki.read_bytes()) // 2)
    elif damage == "truncate":
        truncate(wiki)
    elif damage == "swap":  # the audit's case: PTB tokens under the WikiText-2 entry's name
        shutil.copyfile(ptb, wiki)
    else:  # re-saved with other token ids but the old manifest: only the content hash can tell
        with np.load(wiki) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["ids"] = arrays["ids"].copy()
        arrays["ids"][3] += 1
        np.savez(wiki, **arrays)
    with pytest.warns(CacheWarning, match="rejected"):
        again = tokens()
    assert (again == ref).all()
    assert (tokens("ptb") == ptb_ref).all()
    recwarn.clear()
    assert (tokens() == ref).all() and not [w for w in recwarn if w.category is CacheWarning]  # rewritten valid


def test_token_cache_names_its_dataset(data_dir):
    from prunekit.core.cache import cache_dir
    tokens()
    wiki = next((cache_dir() / "tokens").glob("wikitext2-test-*.npz"))
    with np.load(wiki) as z:
        ident = json.loads(str(z["manifest"]))["identity"]
    sha = hashlib.sha256((data_dir / "wikitext-2-raw" / "wiki.test.raw").read_bytes()).hexdigest()
    assert ident["dataset"] == "wikitext2" and ident["split"] == "test" and ident["source_sha256"] == sha
    assert ident["tokenizer"]


def test_token_staging_of_a_killed_writer_is_removed(data_dir):
    from prunekit.core.cache import cache_dir
    folder = cache_dir() / "tokens"
    folder.mkdir(parents=True)
    stale = folder / f".wikitext2-test-x.npz.tmp-{dead_pid()}-.npz"
    live = folder / f".wikitext2-test-y.npz.tmp-{os.getpid()}-.npz"
    stale.write_bytes(b"half")
    live.write_bytes(b"writing")
    tokens()
    assert not stale.exists() and live.exists()


# ----------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("damage", DAMAGES)
def test_statistics_damage_warns_and_recomputes(tmp_path, damage):
    from prunekit.allocation.registry import allocate
    from prunekit.scoring.statistics import Statistics, StatsCache
    cache, model, calib = StatsCache(tmp_path / "stats"), tiny_model("llama"), tiny_calib()
    ref = allocate("owl", Statistics(model, calib, cache=cache, progress=False), 0.6).values
    files = sorted(cache.root.glob("*.safetensors"))
    assert files
    f = files[0]
    if damage == "flip":
        flip(f)
    elif damage == "truncate":
        truncate(f)
    else:  # a valid entry of another model under this entry's name
        other = StatsCache(tmp_path / "other")
        allocate("owl", Statistics(tiny_model("llama", seed=1), calib, cache=other, progress=False), 0.6)
        shutil.copyfile(next(other.root.glob("*.safetensors")), f)
    s = Statistics(model, calib, cache=cache, progress=False)
    with pytest.warns(CacheWarning, match="rejected"):
        got = allocate("owl", s, 0.6).values
    np.testing.assert_array_equal(got, ref)
    assert s.dense_passes == 1


# ----------------------------------------------------------------------------- model directories

def _fake_smollm2_entry(cache: Path) -> None:
    """The dequantised-SmolLM2 entry tiny-llama takes its tokenizer from, without the 538 MB of
    weights: the tokenizer files of the user's entry, sealed under the GGUF's real identity."""
    from prunekit.core import cache as C
    from prunekit.core.aliases import _sha256, _smollm2_gguf
    src = next((d for d in sorted((USER_CACHE / "dense").glob("SmolLM2-135M-Instruct*"))
                if (d / "tokenizer.json").is_file()), None)
    if src is None:
        pytest.skip("no dequantised SmolLM2 in the user cache to take the tokenizer from")
    g = _smollm2_gguf()
    full = _sha256(g)
    d = cache / "dense" / f"{g.stem}-{full[:16]}"
    d.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "special_tokens_map.json",
                 "chat_template.jinja"):
        if (src / name).is_file():
            shutil.copyfile(src / name, d / name)
    C.seal_dir(d, {"gguf_sha256": full})


def _ppl():
    from prunekit.core.loading import load_model
    from prunekit.evaluation.perplexity import perplexity
    rt = load_model("tiny-llama", "cpu")
    model, tok = rt.model, rt.tokenizer
    return perplexity(Runtime.of(model, tok), "wikitext2", 64, 2, progress=False)["perplexity"]


@pytest.mark.skipif(not os.environ.get("PRUNEKIT_DATA_DIR"), reason="PRUNEKIT_DATA_DIR not set")
@pytest.mark.parametrize("damage", DAMAGES + ["foreign-file", "manifest-identity"])
def test_model_cache_damage_is_detected_and_rebuilt(damage, recwarn):
    from prunekit.core.cache import cache_dir
    _fake_smollm2_entry(cache_dir())
    ref = _ppl()
    entry = cache_dir() / "dense" / "tiny-llama-v1"
    w = entry / "model.safetensors"
    if damage == "flip":  # one bit of one weight: same size, same structure
        flip(w, w.stat().st_size - 7)
    elif damage == "truncate":
        truncate(w)
    elif damage == "swap":  # a valid safetensors of another model under the entry's name
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in tiny_model("llama", seed=3).state_dict().items()}, str(w))
    elif damage == "foreign-file":
        (entry / "pytorch_model.bin").write_bytes(b"extra weights")
    else:
        man = json.loads((entry / "prunekit.json").read_text())
        man["identity"]["seed"] = 1
        (entry / "prunekit.json").write_text(json.dumps(man))
    with pytest.warns(CacheWarning, match="tiny-llama-v1 rejected"):
        again = _ppl()
    assert again == ref
    recwarn.clear()
    assert _ppl() == ref and not [x for x in recwarn if x.category is CacheWarning]


@pytest.mark.skipif(not os.environ.get("PRUNEKIT_DATA_DIR"), reason="PRUNEKIT_DATA_DIR not set")
def test_model_staging_of_a_killed_writer_is_removed():
    from prunekit.core.cache import cache_dir
    from prunekit.core.loading import load_model
    _fake_smollm2_entry(cache_dir())
    dense = cache_dir() / "dense"
    stale = dense / f".tiny-llama-v1.tmp-{dead_pid()}-abc"
    live = dense / f".tiny-llama-v1.tmp-{os.getpid()}-def"
    for d in (stale, live):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    load_model("tiny-llama", "cpu")
    assert not stale.exists() and live.exists()


def test_legacy_entry_is_adopted_and_sealed(tmp_path):
    """An entry written before manifests had file hashes is checked structurally and sealed, not
    thrown away (the shared dequantised model costs minutes to rebuild)."""
    from prunekit.core import cache as C
    d = tmp_path / "entry"
    tiny_model("llama").save_pretrained(d, safe_serialization=True)
    (d / "prunekit.json").write_text(json.dumps({"gguf": "/x.gguf", "sha256_16": "ab"}))
    ident = {"gguf_sha256": "ab" * 32}
    assert C.usable_dir(d, ident, adopt=lambda m: m.get("sha256_16") == "ab")
    assert C.verify_dir(d, ident) is None
    flip(d / "model.safetensors")
    assert "hash" in C.verify_dir(d, ident)


def test_legacy_staging_without_pid_is_removed_after_a_day(tmp_path):
    """Older prunekit named staging `.name.tmp-<random>`: removed once a day old, kept while fresh."""
    import time

    from prunekit.core import cache as C
    old, fresh = tmp_path / ".tiny-llama-v1.tmp-k2j4h5g1", tmp_path / ".tiny-llama-v1.tmp-a8b7c6d5"
    for d in (old, fresh):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"partial")
    t = time.time() - C.LEGACY_STAGING_AGE_S - 60
    os.utime(old, (t, t))
    (tmp_path / "keep.tmp-notours").write_text("x")  # not hidden: never touched
    assert C.clean_staging(tmp_path) == [old]
    assert fresh.exists() and (tmp_path / "keep.tmp-notours").exists()

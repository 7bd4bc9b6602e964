"""Data: WikiText-2, C4 and PTB text, the calibration sampler and the evaluation token stream.

Sources, in order: the directory named by ``PRUNEKIT_DATA_DIR`` (layout of ``shared/data``:
``wikitext-2-raw/wiki.test.raw``, ``c4/c4-train.00000-of-01024.first1000.jsonl``,
``ptb/ptb.{valid,test}.txt``), then Hugging Face ``datasets`` online.

Local-file deviations from the reference protocol (documented in the README):
- wikitext2: the local file has no blank rows and CRLF endings, so the joined text differs slightly
  from ``"\\n\\n".join(hf_rows)``; only the test split exists, so calibrating on wikitext2 offline
  uses the test split (a warning is printed).
- c4: only the first 1000 train documents exist; documents [0, 900) form the calibration pool and
  [900, 1000) the evaluation text (the reference evaluates on the validation shard).
- ptb: calibration uses the valid split (the reference uses train, which is not available).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from prunekit.core import cache
from prunekit.core.cache import cache_dir
from prunekit.errors import PrunekitError
from prunekit.vocabulary import DATASETS

C4_LOCAL_CALIB_DOCS = 900  # local c4 docs [0, 900) calibrate, [900, 1000) evaluate
C4_EVAL_WINDOWS = 256      # reference: first 256*seqlen tokens of the validation text

_LOCAL = {
    ("wikitext2", "test"): "wikitext-2-raw/wiki.test.raw",
    ("wikitext2", "calib"): "wikitext-2-raw/wiki.test.raw",
    ("c4", "calib"): "c4/c4-train.00000-of-01024.first1000.jsonl",
    ("c4", "test"): "c4/c4-train.00000-of-01024.first1000.jsonl",
    ("ptb", "test"): "ptb/ptb.test.txt",
    ("ptb", "calib"): "ptb/ptb.valid.txt",
}


@dataclass
class Text:
    """A dataset split as either one joined string (``text``) or a list of documents (``docs``)."""
    name: str
    split: str
    origin: str
    sha256: str
    text: str | None = None
    docs: list[str] | None = field(default=None, repr=False)


def data_dir() -> Path | None:
    d = os.environ.get("PRUNEKIT_DATA_DIR")
    return Path(d) if d else None


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise PrunekitError(f"unknown dataset '{name}'; choose from {', '.join(DATASETS)}")


def _read_local(name: str, split: str, path: Path) -> Text:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PrunekitError(f"dataset '{name}': cannot read {path}: {e.strerror}") from None
    sha = hashlib.sha256(raw).hexdigest()
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PrunekitError(f"dataset '{name}': {path} is not UTF-8 text (byte {e.start})") from None
    if "\x00" in s:
        raise PrunekitError(f"dataset '{name}': {path} holds NUL bytes; not a text file")
    if not s.strip():
        raise PrunekitError(f"dataset '{name}': {path} is empty")
    if name == "wikitext2":
        lines = [ln for ln in s.replace("\r\n", "\n").split("\n") if ln.strip()]
        # HF rows keep their trailing "\n"; the reference joins rows with "\n\n"
        return Text(name, split, str(path), sha, text="\n\n".join(ln + "\n" for ln in lines))
    if name == "ptb":
        # HF ptb_text_only 'sentence' = stripped line; the reference joins sentences with " "
        return Text(name, split, str(path), sha, text=" ".join(ln.strip() for ln in s.splitlines()))
    try:
        docs = [json.loads(ln)["text"] for ln in s.splitlines() if ln.strip()]
        if not all(isinstance(d, str) for d in docs):
            raise TypeError("'text' is not a string")
    except (ValueError, KeyError, TypeError) as e:
        raise PrunekitError(f"dataset '{name}': {path} is not JSON lines with a 'text' field ({type(e).__name__})") from None
    if split == "calib":
        return Text(name, split, str(path), sha, docs=docs[:C4_LOCAL_CALIB_DOCS])
    return Text(name, split, str(path), sha, text=" ".join(docs[C4_LOCAL_CALIB_DOCS:]))


PTB_PARQUET = ("hf://datasets/ptb-text-only/ptb_text_only@refs%2Fconvert%2Fparquet/"
               "penn_treebank/{split}/0000.parquet")


def _read_hf(name: str, split: str) -> Text:
    from datasets import load_dataset
    if name == "wikitext2":
        ds = load_dataset("wikitext", "wikitext-2-raw-v1", split="train" if split == "calib" else "test")
        text = "\n\n".join(ds["text"])
        return Text(name, split, "hf:wikitext-2-raw-v1", _sha(text), text=text)
    if name == "ptb":
        # the hub's parquet conversion of ptb_text_only: current `datasets` no longer runs the
        # dataset's loading script, the parquet branch needs none
        hf_split = "train" if split == "calib" else "test"
        ds = load_dataset("parquet", data_files={hf_split: PTB_PARQUET.format(split=hf_split)}, split=hf_split)
        text = " ".join(ds["sentence"])
        return Text(name, split, "hf:ptb_text_only (parquet)", _sha(text), text=text)
    if split == "calib":
        ds = load_dataset("allenai/c4", data_files={"train": "en/c4-train.00000-of-01024.json.gz"},
                          split="train")
        docs = list(ds["text"])
        return Text(name, split, "hf:allenai/c4 train.00000", _sha("\x00".join(docs)), docs=docs)
    ds = load_dataset("allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
                      split="validation")
    text = " ".join(ds[:1100]["text"])
    return Text(name, split, "hf:allenai/c4 validation.00000[:1100]", _sha(text), text=text)


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def load_text(name: str, split: str) -> Text:
    """``split`` is 'calib' or 'test'. Local directory first, then HF datasets."""
    _check_name(name)
    d = data_dir()
    rel = _LOCAL[(name, split)]
    if d is not None:
        if not d.is_dir():
            raise PrunekitError(f"PRUNEKIT_DATA_DIR={d} does not exist; point it at a copy of shared/data")
        if (d / rel).is_file():
            if name == "wikitext2" and split == "calib":
                warnings.warn("offline wikitext2 has only the test split: calibrating on it", stacklevel=2)
            return _read_local(name, split, d / rel)
    try:
        return _read_hf(name, split)
    except Exception as e:
        looked = f"{d / rel}" if d is not None else "PRUNEKIT_DATA_DIR (unset)"
        raise PrunekitError(
            f"dataset '{name}' not found: looked in {looked} and HF datasets "
            f"({type(e).__name__}); set PRUNEKIT_DATA_DIR to a copy of shared/data or go online") from e


# ----------------------------------------------------------------------------- tokenisation cache

def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(str(tokenizer.bos_token).encode())
    return h.hexdigest()[:16]


def _cached_tokens(key: str, make, identity: dict) -> np.ndarray | list[np.ndarray]:
    """Token arrays cached under ``key``; the entry's manifest ties it to ``identity`` (dataset,
    split, source hash, tokenizer), so a swapped, truncated or altered entry is rebuilt, not used."""
    folder = cache_dir() / "tokens"
    cache.clean_staging(folder)
    path = folder / f"{key}.npz"
    z = cache.load_arrays(path, identity)
    if z is not None and "offsets" in z and "flat" in z:
        flat, off = z["flat"], z["offsets"]
        return [flat[off[i]:off[i + 1]] for i in range(len(off) - 1)]
    if z is not None and "ids" in z:
        return z["ids"]
    out = make()
    if isinstance(out, list):
        off = np.cumsum([0] + [len(a) for a in out])
        arrays = {"flat": np.concatenate(out) if out else np.zeros(0, np.int64), "offsets": off}
    else:
        arrays = {"ids": out}
    cache.save_arrays(path, arrays, identity)
    return out


def _identity(src: Text, tokenizer_fp: str, kind: str) -> dict:
    return {"dataset": src.name, "split": src.split, "source_sha256": src.sha256, "tokenizer": tokenizer_fp,
            "kind": kind}


def _encode(tokenizer, text: str) -> np.ndarray:
    # default special tokens, as the reference (LLaMA: one BOS at the very start)
    return np.asarray(tokenizer(text, return_tensors=None)["input_ids"], dtype=np.int64)


def token_stream(name: str, split: str, tokenizer) -> tuple[torch.Tensor, Text]:
    """The whole split tokenised once as a single sequence, shape (1, N)."""
    src = load_text(name, split)
    if src.text is None:
        raise PrunekitError(f"{name}/{split} is a document pool, not a text stream")
    tfp = tokenizer_fingerprint(tokenizer)
    ids = _cached_tokens(f"{name}-{split}-{src.sha256[:16]}-{tfp}", lambda: _encode(tokenizer, src.text),
                         _identity(src, tfp, "stream"))
    return torch.from_numpy(np.asarray(ids)).unsqueeze(0), src


@dataclass
class Calibration:
    """Calibration token windows (n, seqlen) plus what made them."""
    input_ids: torch.Tensor
    dataset: str
    seed: int
    data_sha256: str
    picks: list[tuple[int, int]]  # (doc or -1, start) of every sample, for disjointness checks

    @property
    def nsamples(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seqlen(self) -> int:
        return self.input_ids.shape[1]

    def key(self) -> str:
        return f"{self.dataset}-n{self.nsamples}-L{self.seqlen}-s{self.seed}-{self.data_sha256[:12]}"


def calibration_data(name: str, tokenizer, nsamples: int = 128, seqlen: int = 2048, seed: int = 0,
                     exclude: Calibration | None = None) -> Calibration:
    """Wanda/SparseGPT sampler: python ``random.seed(seed)``; C4 draws random documents until one
    tokenises to > seqlen tokens, then a random window; text streams draw a random window.
    ``exclude`` rejects windows already used by another Calibration (held-out sets)."""
    if nsamples < 1 or seqlen < 2:
        raise PrunekitError(f"need nsamples >= 1 and seqlen >= 2, got {nsamples}, {seqlen}")
    src, docs, ids = _calib_tokens(name, tokenizer)
    rng = random.Random(seed)
    taken = set(exclude.picks) if exclude is not None else set()
    picks, rows = [], []
    if docs is not None:
        if not any(len(d) > seqlen for d in docs):
            raise PrunekitError(f"no {name} document is longer than seqlen={seqlen} tokens; lower --calib-seqlen")
        _check_enough(name, _window_count(docs, ids, seqlen), nsamples, seqlen, taken)
        while len(rows) < nsamples:
            while True:
                i = rng.randint(0, len(docs) - 1)
                if len(docs[i]) > seqlen:
                    break
            start = rng.randint(0, len(docs[i]) - seqlen - 1)
            if (i, start) in taken:
                continue
            taken.add((i, start))
            picks.append((i, start))
            rows.append(docs[i][start:start + seqlen])
    else:
        if len(ids) <= seqlen + 1:
            raise PrunekitError(f"{name} has only {len(ids)} tokens; lower --calib-seqlen")
        _check_enough(name, _window_count(docs, ids, seqlen), nsamples, seqlen, taken)
        while len(rows) < nsamples:
            start = rng.randint(0, len(ids) - seqlen - 1)
            if (-1, start) in taken:
                continue
            taken.add((-1, start))
            picks.append((-1, start))
            rows.append(ids[start:start + seqlen])
    x = torch.from_numpy(np.stack(rows).astype(np.int64))
    return Calibration(x, name, seed, src.sha256, picks)


def available_windows(name: str, tokenizer, seqlen: int) -> int:
    """How many distinct calibration windows of ``seqlen`` tokens dataset ``name`` holds for
    ``tokenizer`` (the sampler's count; token arrays come from the cache the sampler fills)."""
    _, docs, ids = _calib_tokens(name, tokenizer)
    return _window_count(docs, ids, seqlen)


def _calib_tokens(name: str, tokenizer):
    """(source text, token array per document or None, the token stream or None) of a calibration
    dataset: documents (C4) or one stream (WikiText-2, PTB), tokenised once into the cache."""
    src = load_text(name, "calib")
    if src.docs is not None:
        tfp = tokenizer_fingerprint(tokenizer)
        docs = _cached_tokens(f"{name}-calibdocs-{src.sha256[:16]}-{tfp}",
                              lambda: [_encode(tokenizer, t) for t in src.docs], _identity(src, tfp, "docs"))
        return src, docs, None
    ids, _ = token_stream(name, "calib", tokenizer)
    return src, None, ids[0].numpy()


def _window_count(docs, ids, seqlen: int) -> int:
    """Distinct windows the sampler can draw: a start in [0, len − seqlen) of every long enough document
    (or of the stream)."""
    if docs is not None:
        return sum(len(d) - seqlen for d in docs if len(d) > seqlen)
    return len(ids) - seqlen if len(ids) > seqlen + 1 else 0


def _check_enough(name: str, windows: int, nsamples: int, seqlen: int, taken: set) -> None:
    """The sampler draws distinct windows by rejection: fewer than ``nsamples`` left would never end."""
    free = windows - len(taken)
    if nsamples > free:
        raise PrunekitError(f"{name} has {free} distinct windows of {seqlen} tokens left, fewer than the {nsamples} "
                            f"samples asked for; use at most {free} samples or a shorter seqlen")


def heldout_set(calib: Calibration, tokenizer, nsamples: int, seqlen: int | None = None,
                dataset: str | None = None, seed: int | None = None) -> Calibration:
    """The held-out set of every analysis that must not score on the pruning windows (SV-NUP's game,
    absorption's γ, MRP's selections): ``nsamples`` windows of ``dataset`` (default: the calibration
    dataset), drawn with seed ``calib.seed + 1`` unless given, disjoint from ``calib``."""
    if nsamples < 1:
        raise PrunekitError(f"a held-out set needs at least 1 window, got {nsamples}")
    return calibration_data(dataset or calib.dataset, tokenizer, nsamples, seqlen or calib.seqlen,
                            calib.seed + 1 if seed is None else seed, exclude=calib)


def eval_tokens(name: str, tokenizer, seqlen: int) -> tuple[torch.Tensor, Text]:
    """Evaluation stream for the perplexity protocol; C4 is cut to the reference 256 windows."""
    ids, src = token_stream(name, "test", tokenizer)
    if name == "c4":
        ids = ids[:, : C4_EVAL_WINDOWS * seqlen]
    return ids, src


def check_text(name: str, split: str, seqlen: int | None = None, flag: str = "", samples: int | None = None,
               samples_flag: str = "--calib-samples") -> None:
    """The data file exists, is UTF-8 text and is not empty (read now, not after pruning), and is
    long enough for one window of ``seqlen`` tokens (a byte-level BPE or SentencePiece token spans
    at least one UTF-8 byte, so a text of fewer bytes can never fill the window — no tokenizer needed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = load_text(name, split)
    if not (t.text or "").strip() and not any((d or "").strip() for d in (t.docs or [])):
        raise PrunekitError(f"dataset '{name}' ({split}) from {t.origin} holds no text")
    if seqlen is not None:
        longest = (len(t.text.encode()) if t.text is not None else max(len(d.encode()) for d in t.docs))
        if longest + 2 <= seqlen:  # +2: BOS/EOS the tokenizer may add
            what = "text" if t.text is not None else "longest document"
            raise PrunekitError(f"{flag} {seqlen}: the {what} of dataset '{name}' ({split}) has only {longest} "
                                f"bytes, fewer than {seqlen} tokens")
        if samples is not None:
            # distinct windows of seqlen tokens: a text of b bytes has at most b + 2 tokens, so at
            # most b + 2 - seqlen + 1 window starts (per document for a document dataset)
            lens = [len(t.text.encode())] if t.text is not None else [len(d.encode()) for d in t.docs]
            most = sum(max(0, n + 3 - seqlen) for n in lens)
            if samples > most:
                raise PrunekitError(f"{samples_flag} {samples}: dataset '{name}' ({split}) holds at most {most} "
                                    f"distinct windows of {seqlen} tokens; use at most {most} samples or a "
                                    "shorter seqlen")

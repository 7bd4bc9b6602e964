"""Saved models that every supported transformers reads (4.56+ and 5.x).

transformers 5 writes two things 4.x misreads: ``tokenizer_config.json`` names the class
``TokenizersBackend`` (4.x: "does not exist") and ``config.json`` keeps RoPE settings only under
``rope_parameters`` (4.x ignores that key and silently falls back to its default ``rope_theta``,
wrong for SmolLM2's 100 000 and Gemma-3's 1 000 000). ``make_portable(dir)`` adds what 4.x reads
beside what 5.x reads: the tokenizer class ``PreTrainedTokenizerFast`` (5.x maps it to the same
backend) and the legacy ``rope_theta`` / ``rope_scaling`` / ``rope_local_base_freq`` fields, from
the values 5.x wrote. Loader-only keys (``is_local``, ``local_files_only``) are dropped.
tests/test_portable.py loads saved models in a transformers 4.x venv and compares logits.
"""
from __future__ import annotations

import json
from pathlib import Path

PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
_V5_ONLY_TOKENIZER_CLASSES = {"TokenizersBackend"}
_LOADER_KEYS = ("is_local", "local_files_only")


def _rewrite(path: Path, fn) -> None:
    if not path.is_file():
        return
    obj = json.loads(path.read_text())
    new = fn(dict(obj))
    if new != obj:
        from prunekit.utils import atomic_write_text
        atomic_write_text(path, json.dumps(new, indent=2, sort_keys=True) + "\n")


def portable_tokenizer_config(cfg: dict) -> dict:
    if cfg.get("tokenizer_class") in _V5_ONLY_TOKENIZER_CLASSES:
        cfg["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    for k in _LOADER_KEYS:
        cfg.pop(k, None)
    return cfg


def _legacy_rope(rp: dict) -> tuple[float | None, dict | None]:
    theta = rp.get("rope_theta")
    rest = {k: v for k, v in rp.items() if k != "rope_theta"}
    scaling = rest if rest.get("rope_type", "default") != "default" else None
    return theta, scaling


def portable_model_config(cfg: dict) -> dict:
    rp = cfg.get("rope_parameters")
    if not isinstance(rp, dict) or not rp:
        return cfg
    if all(isinstance(v, dict) for v in rp.values()):  # per layer type (Gemma-3: full / sliding attention)
        full = rp.get("full_attention") or next(iter(rp.values()))
        theta, scaling = _legacy_rope(full)
        if "sliding_attention" in rp and rp["sliding_attention"].get("rope_theta") is not None:
            cfg.setdefault("rope_local_base_freq", rp["sliding_attention"]["rope_theta"])
    else:
        theta, scaling = _legacy_rope(rp)
    if theta is not None:
        cfg.setdefault("rope_theta", theta)
    if scaling is not None and cfg.get("rope_scaling") is None:
        cfg["rope_scaling"] = scaling
    return cfg


def make_portable(model_dir: str | Path) -> None:
    """Rewrite a saved model directory's config and tokenizer config in place (before it is sealed)."""
    d = Path(model_dir)
    _rewrite(d / "tokenizer_config.json", portable_tokenizer_config)
    _rewrite(d / "config.json", portable_model_config)

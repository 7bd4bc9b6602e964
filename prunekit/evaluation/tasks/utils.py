"""``custom_dataset`` loaders of the offline twins: local file -> stock task's Hugging Face schema.

lm-eval calls ``load_<task>(**metadata, **dataset_kwargs)``; the rendered YAML passes
``prunekit_data_dir``. Each loader returns a ``datasets.DatasetDict`` whose split names are the
ones the stock YAML evaluates on, with exactly the fields the stock doc_to_text / doc_to_target /
doc_to_choice / process_docs read. See docs/zero_shot.md for every difference from the HF data.
"""
from __future__ import annotations

import bz2
import json
import os
from pathlib import Path

from prunekit.errors import PrunekitError


def _root(prunekit_data_dir=None) -> Path:
    d = prunekit_data_dir or os.environ.get("PRUNEKIT_DATA_DIR")
    if not d:
        raise PrunekitError("no data directory: set PRUNEKIT_DATA_DIR to a copy of shared/data")
    return Path(d)


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def _convert(path: Path, rows, fn, expected: str) -> list[dict]:
    try:
        return [fn(i, r) for i, r in enumerate(rows)]
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise PrunekitError(f"{path}: unexpected record format ({type(e).__name__}: {e}); "
                            f"expected {expected}") from e


def _dataset(**splits):
    import datasets
    return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})


# ----------------------------------------------------------------------------- record converters

def boolq_record(i, r) -> dict:
    """SuperGLUE jsonl {question, passage, idx, label: "true"/"false"} -> HF super_glue/boolq
    (ClassLabel False=0, True=1). JSON booleans are accepted too."""
    label = _BOOL.get(r["label"] if isinstance(r["label"], bool) else str(r["label"]).lower())
    if label is None:
        raise ValueError(f"label {r['label']!r} is not true/false")
    return {"question": r["question"], "passage": r["passage"], "idx": r["idx"], "label": label}


_BOOL = {True: 1, False: 0, "true": 1, "false": 0}


_RTE_LABELS = {"entailment": 0, "not_entailment": 1}  # GLUE rte ClassLabel order


def rte_record(i, r) -> dict:
    """SuperGLUE RTE jsonl {premise, hypothesis, label: str} -> HF glue/rte (what stock `rte` reads)."""
    return {"sentence1": r["premise"], "sentence2": r["hypothesis"],
            "label": _RTE_LABELS[r["label"]], "idx": r["idx"]}


def arc_record(i, r) -> dict:
    """AI2 ARC jsonl {id, question: {stem, choices: [{text, label}]}, answerKey} -> HF allenai/ai2_arc."""
    q = r["question"]
    return {"id": r["id"], "question": q["stem"],
            "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]},
            "answerKey": r["answerKey"]}


def openbookqa_record(i, r) -> dict:
    """llm-foundry {query, choices[4], gold} -> HF allenai/openbookqa main (labels A..D; no id/fact)."""
    labels = [chr(ord("A") + k) for k in range(len(r["choices"]))]
    return {"id": str(i), "question_stem": r["query"],
            "choices": {"text": list(r["choices"]), "label": labels}, "answerKey": labels[r["gold"]]}


def winogrande_record(i, r) -> dict:
    """llm-foundry {context_options[2], continuation, gold} -> HF allenai/winogrande.

    The stock task scores ``sentence[:blank] + option`` as context and ``sentence[blank+1:].strip()`` as
    target. The blank is put right after the longest common prefix of the two context options (cut
    back to a word boundary), so ``sentence[:blank] + option_k`` reproduces context_options[k] exactly.
    """
    a, b = r["context_options"]
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    while n > 0 and not a[n - 1].isspace():
        n -= 1
    prefix = a[:n]
    if r["gold"] not in (0, 1):
        raise ValueError(f"gold {r['gold']!r} not in (0, 1)")
    return {"sentence": prefix + "_ " + r["continuation"].strip(), "option1": a[n:], "option2": b[n:],
            "answer": str(r["gold"] + 1)}


def piqa_record(i, r) -> dict:
    """Authors' valid.jsonl {goal, sol1, sol2} + the label line -> HF piqa (label 0 = sol1)."""
    doc, label = r
    if label not in ("0", "1"):
        raise ValueError(f"label line {label!r} is not 0 or 1")
    return {"goal": doc["goal"], "sol1": doc["sol1"], "sol2": doc["sol2"], "label": int(label)}


def lambada_record(i, r) -> dict:
    """OpenAI lambada_test.jsonl {text} is already the HF EleutherAI/lambada_openai schema."""
    return {"text": r["text"]}


def hellaswag_record(i, block) -> dict:
    """llama.cpp 6-line block -> HF Rowan/hellaswag fields read by the stock process_docs.

    Line 1 is ``activity_label + ": " + ctx`` with ctx = ctx_a + " " + ctx_b already joined (and not
    capitalised), so ctx_a carries the whole context and ctx_b is empty.
    """
    head, label, *endings = block
    activity, ctx = head.split(": ", 1)
    if len(endings) != 4 or label.strip() not in ("0", "1", "2", "3"):
        raise ValueError(f"block {i} does not have a 0-3 label and 4 endings")
    return {"ind": i, "activity_label": activity, "ctx_a": ctx, "ctx_b": "", "ctx": ctx,
            "endings": endings, "label": label.strip()}


# ----------------------------------------------------------------------------- loaders

def load_boolq(prunekit_data_dir=None, **_):
    p = _root(prunekit_data_dir) / "boolq/val.jsonl"
    return _dataset(validation=_convert(p, _jsonl(p), boolq_record, "SuperGLUE BoolQ jsonl"))


def load_rte(prunekit_data_dir=None, **_):
    p = _root(prunekit_data_dir) / "rte/val.jsonl"
    return _dataset(validation=_convert(p, _jsonl(p), rte_record, "SuperGLUE RTE jsonl"))


def _load_arc(root: Path, sub: str, stem: str):
    test, dev = root / sub / f"{stem}-Test.jsonl", root / sub / f"{stem}-Dev.jsonl"
    return _dataset(test=_convert(test, _jsonl(test), arc_record, "AI2 ARC jsonl"),
                    validation=_convert(dev, _jsonl(dev), arc_record, "AI2 ARC jsonl"))


def load_arc_easy(prunekit_data_dir=None, **_):
    return _load_arc(_root(prunekit_data_dir), "arc_easy", "ARC-Easy")


def load_arc_challenge(prunekit_data_dir=None, **_):
    return _load_arc(_root(prunekit_data_dir), "arc_challenge", "ARC-Challenge")


def load_openbookqa(prunekit_data_dir=None, **_):
    p = _root(prunekit_data_dir) / "openbookqa/openbookqa_test.llmfoundry.jsonl"
    return _dataset(test=_convert(p, _jsonl(p), openbookqa_record, "llm-foundry {query, choices, gold}"))


def load_winogrande(prunekit_data_dir=None, **_):
    p = _root(prunekit_data_dir) / "winogrande/winogrande_xl_dev.llmfoundry.jsonl"
    return _dataset(validation=_convert(p, _jsonl(p), winogrande_record,
                                        "llm-foundry {context_options, continuation, gold}"))


def load_piqa(prunekit_data_dir=None, **_):
    root = _root(prunekit_data_dir)
    p, lp = root / "piqa/valid.jsonl", root / "piqa/valid-labels.lst"
    docs, labels = _jsonl(p), [ln.strip() for ln in lp.read_text().splitlines() if ln.strip()]
    if len(docs) != len(labels):
        raise PrunekitError(f"{p} has {len(docs)} records but {lp} has {len(labels)} labels; "
                            f"use the matching pair from the PIQA release")
    return _dataset(validation=_convert(p, list(zip(docs, labels)), piqa_record, "PIQA jsonl + labels"))


def load_lambada_openai(prunekit_data_dir=None, **_):
    p = _root(prunekit_data_dir) / "lambada_openai/lambada_test.jsonl"
    return _dataset(test=_convert(p, _jsonl(p), lambada_record, "jsonl of {text}"))


def load_hellaswag(prunekit_data_dir=None, **_):
    p = _root(prunekit_data_dir) / "hellaswag/hellaswag_val_full.llamacpp.txt.bz2"
    with bz2.open(p, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise PrunekitError(f"{p}: {len(lines)} lines is not a multiple of 6; expected the llama.cpp "
                            f"hellaswag format (context, label, 4 endings)")
    blocks = [lines[k:k + 6] for k in range(0, len(lines), 6)]
    return _dataset(validation=_convert(p, blocks, hellaswag_record, "llama.cpp 6-line blocks"))

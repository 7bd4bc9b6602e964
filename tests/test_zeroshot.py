"""Zero-shot (prunekit/evaluation/zeroshot.py, tasks/) through stock lm-eval on offline twins of the
stock tasks (docs/zero_shot.md).

Independent references: (1) the STOCK lm-eval task config (prompt templates, choices, target) applied
to documents the test converts into the Hugging Face schema itself from the raw lines; (2) facts
about the data stated in shared/data/SOURCES.md; (3) a hand-wired Llama whose answer is forced, so
its accuracy is known from the labels alone.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from conftest import hf_byte_tokenizer, tiny_model

from prunekit.errors import PrunekitError
from prunekit.core.runtime import Runtime

DATA = Path(os.environ.get("PRUNEKIT_DATA_DIR") or "PRUNEKIT_DATA_DIR-not-set")
if not (DATA / "boolq/val.jsonl").is_file():
    pytest.skip("offline zero-shot data not found (set PRUNEKIT_DATA_DIR)", allow_module_level=True)

# Where lm-eval 0.4.13 keeps the stock tasks (written here independently of prunekit.evaluation.tasks), and
# the split each stock task evaluates on.
STOCK = {
    "arc_easy": ("arc/arc_easy.yaml", "test"),
    "arc_challenge": ("arc/arc_challenge.yaml", "test"),
    "boolq": ("super_glue/boolq/default.yaml", "validation"),
    "rte": ("glue/rte/default.yaml", "validation"),
    "piqa": ("piqa/piqa.yaml", "validation"),
    "lambada_openai": ("lambada/lambada_openai.yaml", "test"),
}


def _lines(rel, n=None):
    with open(DATA / rel, encoding="utf-8") as f:
        out = [ln.rstrip("\n") for ln in f if ln.strip()]
    return out if n is None else out[:n]


def _raw(rel, n=None):
    return [json.loads(ln) for ln in _lines(rel, n)]


# ----------------------------------------------------------------------------- hand conversions

def _expected_docs(task, n=5):
    """The first n documents in the HF schema of the stock task, converted here from the raw files."""
    if task in ("arc_easy", "arc_challenge"):
        stem = "ARC-Easy" if task == "arc_easy" else "ARC-Challenge"
        return [{"id": r["id"], "question": r["question"]["stem"],
                 "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                             "label": [c["label"] for c in r["question"]["choices"]]},
                 "answerKey": r["answerKey"]} for r in _raw(f"{task}/{stem}-Test.jsonl", n)]
    if task == "boolq":  # HF super_glue boolq: ClassLabel names [False, True]
        return [{"question": r["question"], "passage": r["passage"], "idx": r["idx"],
                 "label": 1 if r["label"] == "true" else 0} for r in _raw("boolq/val.jsonl", n)]
    if task == "rte":  # HF glue rte: ClassLabel names [entailment, not_entailment]
        return [{"sentence1": r["premise"], "sentence2": r["hypothesis"], "idx": r["idx"],
                 "label": 0 if r["label"] == "entailment" else 1} for r in _raw("rte/val.jsonl", n)]
    if task == "piqa":
        labels = _lines("piqa/valid-labels.lst", n)
        return [{**r, "label": int(lab)} for r, lab in zip(_raw("piqa/valid.jsonl", n), labels)]
    if task == "lambada_openai":
        return [{"text": r["text"]} for r in _raw("lambada_openai/lambada_test.jsonl", n)]
    raise KeyError(task)


def _gold_by_meaning(task, k):
    """The gold answer string of raw document k, read off the raw record by its meaning."""
    if task in ("arc_easy", "arc_challenge"):
        d = _expected_docs(task, k + 1)[k]
        return d["choices"]["text"][d["choices"]["label"].index(d["answerKey"])]
    if task == "boolq":
        return {"true": "yes", "false": "no"}[_raw("boolq/val.jsonl", k + 1)[k]["label"]]
    if task == "rte":  # stock asks "... True or False?": entailment is True
        return {"entailment": "True", "not_entailment": "False"}[_raw("rte/val.jsonl", k + 1)[k]["label"]]
    if task == "piqa":
        r = _raw("piqa/valid.jsonl", k + 1)[k]
        return r["sol1"] if _lines("piqa/valid-labels.lst", k + 1)[k] == "0" else r["sol2"]
    if task == "lambada_openai":
        return " " + _raw("lambada_openai/lambada_test.jsonl", k + 1)[k]["text"].split(" ")[-1]
    raise KeyError(task)


# ----------------------------------------------------------------------------- task builders

@pytest.fixture(scope="module")
def offline_tasks(tmp_path_factory):
    """All nine offline twins, loaded once through an lm-eval TaskManager."""
    from lm_eval.tasks import TaskManager

    from prunekit.evaluation.tasks import write_task_configs
    d = tmp_path_factory.mktemp("tasks")
    names = write_task_configs(d, root=DATA)
    loaded = TaskManager(include_path=str(d), include_defaults=False).load(list(names.values()))
    return {stock: loaded["tasks"][name] for stock, name in names.items()}


def _stock_task(task, docs):
    """The stock lm-eval task (its YAML as shipped) with `docs` as the split it evaluates on."""
    import datasets
    import lm_eval
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml
    rel, split = STOCK[task]
    cfg = load_yaml(Path(lm_eval.__file__).parent / "tasks" / rel, resolve_func=True)
    cfg.pop("tag", None)
    cfg["custom_dataset"] = lambda **_: datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})
    for s in ("training_split", "validation_split", "test_split"):
        cfg[s] = None
    cfg[f"{'validation' if split == 'validation' else 'test'}_split"] = split
    return ConfigurableTask(config=cfg)


def _render(task, doc):
    """(prompt, choices or None, gold) exactly as lm-eval builds the requests."""
    text = task.doc_to_text(doc)
    target = task.doc_to_target(doc)
    choices = task.doc_to_choice(doc) if task.config.doc_to_choice is not None else None
    return text, choices, target


def _gold_string(task, doc):
    text, choices, target = _render(task, doc)
    if choices is None:
        return target
    if isinstance(text, int):  # winogrande: choices are contexts, text is the gold index
        return choices[text]
    return choices[target] if isinstance(target, int) else target


# ----------------------------------------------------------------------------- prompts equal stock

@pytest.mark.parametrize("task", list(STOCK))
def test_first_docs_match_stock_task(task, offline_tasks):
    ours = offline_tasks[task]
    our_docs = list(ours.eval_docs)[:5]
    expected = _expected_docs(task, 5)
    stock = _stock_task(task, expected)
    stock_docs = list(stock.eval_docs)
    assert len(our_docs) == len(stock_docs) == 5
    for k, (a, b) in enumerate(zip(our_docs, stock_docs)):
        assert _render(ours, a) == _render(stock, b), f"{task} doc {k}"
        assert _gold_string(ours, a) == _gold_by_meaning(task, k), f"{task} doc {k} gold"


@pytest.mark.parametrize("task", list(STOCK))
def test_offline_config_is_stock_config_plus_data_source(task, tmp_path):
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    from prunekit.evaluation.tasks import write_task_configs
    name = write_task_configs(tmp_path, [task], root=DATA)[task]
    ours = load_yaml(tmp_path / f"{name}.yaml", resolve_func=False)
    stock = load_yaml(Path(lm_eval.__file__).parent / "tasks" / STOCK[task][0], resolve_func=False)
    data_keys = {"task", "tag", "dataset_path", "dataset_name", "dataset_kwargs", "custom_dataset",
                 "training_split", "validation_split", "test_split"}
    assert ours["task"] == f"prunekit_{task}"
    assert {k: v for k, v in ours.items() if k not in data_keys} == \
           {k: v for k, v in stock.items() if k not in data_keys}
    assert ours[f"{'validation' if STOCK[task][1] == 'validation' else 'test'}_split"] == STOCK[task][1]


def test_doc_counts_and_arc_numeric_keys(offline_tasks):
    # official split sizes (SOURCES.md)
    sizes = {"boolq": 3270, "rte": 277, "hellaswag": 10042, "winogrande": 1267, "arc_easy": 2376,
             "arc_challenge": 1172, "openbookqa": 500, "piqa": 1838, "lambada_openai": 5153}
    for t, n in sizes.items():
        assert len(offline_tasks[t].eval_docs) == n, t
    # SOURCES.md WARNING 3: answerKey "2" of this numeric-keyed item is "elements" (not "water")
    arc = offline_tasks["arc_easy"]
    doc = next(d for d in arc.eval_docs if d["id"] == "NYSEDREGENTS_2015_8_28")
    assert _gold_string(arc, doc) == "elements"


def test_derived_formats(offline_tasks):
    """HellaSwag / WinoGrande / OpenBookQA come in derived formats; check against the raw lines."""
    import bz2
    hs = offline_tasks["hellaswag"]
    with bz2.open(DATA / "hellaswag/hellaswag_val_full.llamacpp.txt.bz2", "rt", encoding="utf-8") as f:
        block = [next(f).rstrip("\n") for _ in range(6)]
    text, choices, target = _render(hs, hs.eval_docs[0])
    assert text == block[0] == "Roof shingle removal: A man is sitting on a roof. he"
    assert choices == block[2:] and target == int(block[1]) == 3
    assert choices[target] == "starts pulling up roofing on a roof."  # rowanz's published example

    wg = offline_tasks["winogrande"]
    for k, r in enumerate(_raw("winogrande/winogrande_xl_dev.llmfoundry.jsonl", 5)):
        gold, choices, target = _render(wg, wg.eval_docs[k])
        assert choices == r["context_options"] and gold == r["gold"] and target == r["continuation"].strip()
    assert _gold_string(wg, wg.eval_docs[0]).endswith("so Maria")  # "... always got the easier cases."

    ob = offline_tasks["openbookqa"]
    for k, r in enumerate(_raw("openbookqa/openbookqa_test.llmfoundry.jsonl", 5)):
        assert _render(ob, ob.eval_docs[k]) == (r["query"], r["choices"], r["gold"])
    assert _gold_string(ob, ob.eval_docs[1]) == "a marsh"


# ----------------------------------------------------------------------------- API errors

def test_bad_task_name_and_fallback(tmp_path):
    from prunekit.evaluation.zeroshot import resolve_tasks, zero_shot
    with pytest.raises(PrunekitError, match=r"unknown zero-shot task 'mmlu'.*boolq.*lambada_openai") as e:
        zero_shot(None, ["boolq", "mmlu"])
    assert "\n" not in str(e.value)
    with pytest.raises(PrunekitError, match="no zero-shot task"):
        zero_shot(None, [])
    assert resolve_tasks("boolq, rte", DATA) == {"boolq": "prunekit_boolq", "rte": "prunekit_rte"}
    with pytest.warns(UserWarning, match="stock task"):
        assert resolve_tasks(["piqa"], tmp_path) == {"piqa": None}  # files missing -> stock name


# ----------------------------------------------------------------------------- end to end



def _llama(tok, layers=4, seed=0):
    return tiny_model("llama", layers=layers, seed=seed, vocab=len(tok), max_position_embeddings=8192,
                      tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


pytestmark = pytest.mark.usefixtures("one_thread")  # shared fixture in conftest


@pytest.fixture(scope="module")
def tok():
    return hf_byte_tokenizer()


def _stderr(p, n):
    # lm-eval's mean_stderr: sample std (ddof=1) / sqrt(n)
    return math.sqrt(p * (1 - p) * n / (n - 1) / n)


def test_random_tiny_llama_end_to_end(tok):
    from prunekit.evaluation.zeroshot import zero_shot
    model = _llama(tok)
    model.train()
    r = zero_shot(Runtime.of(model, tok), ["piqa", "arc_easy"], limit=10, batch_size=4)
    assert model.training  # the caller's mode is restored
    assert set(r) == {"piqa", "arc_easy", "mean_acc"}
    for t, chance in (("piqa", 0.5), ("arc_easy", 0.25)):
        row = r[t]
        assert row["n"] == 10 and row["source"].startswith("offline:")
        for m in ("acc", "acc_norm"):
            assert 0.0 <= row[m] <= 1.0
            assert abs(row[m] * 10 - round(row[m] * 10)) < 1e-9  # a count over 10 documents
            assert row[f"{m}_stderr"] == pytest.approx(_stderr(row[m], 10))
        assert abs(row["acc"] - chance) <= 0.45  # untrained: near chance (loose)
    assert r["mean_acc"] == pytest.approx((r["piqa"]["acc"] + r["arc_easy"]["acc"]) / 2)


def _forced_llama(tok, phrases, big=6.0):
    """A Llama that is a hand-wired bigram model: o_proj and down_proj are zero, so each block adds
    nothing and the logits at a position depend on its token alone; embed/lm_head are set so that
    inside each phrase the next byte gets logit 8*big (others 0). It therefore prefers " yes" over
    " no" and " True" over " False" whatever the context: its accuracy equals the gold share."""
    model = _llama(tok, layers=1)
    with torch.no_grad():
        for blk in model.model.layers:
            blk.self_attn.o_proj.weight.zero_()
            blk.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb.zero_()
        emb[:, -1] = 1.0  # tokens outside the phrases: a direction the head ignores -> uniform
        head.zero_()
        dim = {}
        for ph in phrases:
            ids = tok.encode(ph)
            for a, b in zip(ids[:-1], ids[1:]):
                d = dim.setdefault(a, len(dim))
                emb[a] = 0.0
                emb[a, d] = 1.0
                head[b, d] = big
    return model


def test_forced_answer_model(tok, tmp_path):
    from prunekit.evaluation.zeroshot import zero_shot
    model = _forced_llama(tok, [" yes", " True"])
    # documents filtered to gold = yes / True: the forced model must score exactly 1.0
    (tmp_path / "boolq").mkdir()
    (tmp_path / "rte").mkdir()
    yes = [ln for ln in _lines("boolq/val.jsonl") if json.loads(ln)["label"] == "true"][:6]
    ent = [ln for ln in _lines("rte/val.jsonl") if json.loads(ln)["label"] == "entailment"][:6]
    (tmp_path / "boolq/val.jsonl").write_text("\n".join(yes) + "\n")
    (tmp_path / "rte/val.jsonl").write_text("\n".join(ent) + "\n")
    r = zero_shot(Runtime.of(model, tok), ["boolq", "rte"], data_dir=tmp_path, batch_size=4)
    assert (r["boolq"]["acc"], r["boolq"]["n"]) == (1.0, 6)
    assert (r["rte"]["acc"], r["rte"]["n"]) == (1.0, 6)
    assert r["mean_acc"] == 1.0
    # unfiltered: the accuracy is exactly the share of gold = True among the first 10 RTE pairs
    n = 10
    share = sum(json.loads(ln)["label"] == "entailment" for ln in _lines("rte/val.jsonl", n)) / n
    assert 0 < share < 1
    r = zero_shot(Runtime.of(model, tok), "rte", limit=n, data_dir=DATA, batch_size=4)
    assert r["rte"]["acc"] == pytest.approx(share)
    assert r["rte"]["acc_norm"] is None and r["rte"]["n"] == n


def test_per_example_accuracies_follow_the_gold_labels(tok):
    # the forced model answers "True" everywhere: document i is correct iff its gold is entailment
    from prunekit.evaluation.zeroshot import zero_shot
    model = _forced_llama(tok, [" yes", " True"])
    n = 10
    gold = [json.loads(ln)["label"] == "entailment" for ln in _lines("rte/val.jsonl", n)]
    r = zero_shot(Runtime.of(model, tok), "rte", limit=n, data_dir=DATA, batch_size=4, per_example=True)
    assert r["rte"]["per_example_acc"] == [float(g) for g in gold]
    assert "per_example_acc" not in zero_shot(Runtime.of(model, tok), "rte", limit=2, data_dir=DATA, batch_size=4)["rte"]

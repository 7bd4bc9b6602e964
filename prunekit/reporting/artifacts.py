"""What a pruned model carries with it: a model card (README.md) and an llm-compressor recipe.

Both are rendered from the CLI's run record (``prunekit prune --out``), so the card, the record
JSON saved beside the weights and the recipe all describe the same run.
"""
from __future__ import annotations

import json
import shlex

# Hub ids of the aliases' original models (the card's ``base_model``)
BASE_MODELS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3-270m": "google/gemma-3-270m"}
# The base models' licences (the card's ``license``: a pruned model is a derivative of its base).
# tiny-llama's weights are random; its tokenizer is SmolLM2's (Apache-2.0).
BASE_LICENSES = {"smollm2-135m": "apache-2.0", "gemma3-270m": "gemma", "tiny-llama": "apache-2.0"}
RECIPE_MODIFIERS = {"wanda": "WandaPruningModifier", "sparsegpt": "SparseGPTModifier"}


def _fmt(v, nd=4):
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def model_card(rec: dict) -> str:
    """README.md of a saved pruned model: base model and origin, method, metric, allocation with
    options, per-block sparsity, measured perplexities, the exact command and library versions."""
    prov = rec.get("provenance") or {}
    base = rec["model"]
    models = prov.get("models") or []
    origin = models[0].get("origin", "") if models else ""
    hub = BASE_MODELS.get(base)
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             f"tags: [prunekit, pruned, sparse, {rec['metric']}, {rec['allocation']}]"]
    if hub:
        front.append(f"base_model: {hub}")
    lic = BASE_LICENSES.get(base)
    front.append(f"license: {lic or 'other'}")
    front.append("---")
    nm = f", N:M {rec['nm']}" if rec.get("nm") else ""
    opts = json.dumps(rec.get("allocation_options") or {}, sort_keys=True, default=str)
    lines = front + [
        "", f"# {base} pruned to {rec['global_sparsity']:.1%} sparsity ({rec['allocation']} allocation, {rec['metric']})", "",
        "Pruned with prunekit: the zeros are real zeros in dense "
        "weights, so the model loads with stock `transformers` (`AutoModelForCausalLM.from_pretrained(dir)`).", "",
        "## What was done", "",
        f"- **Base model**: `{base}`" + (f" — {origin}" if origin else "") + (f" (hub: `{hub}`)" if hub else ""),
        f"- **Licence**: {lic} (the base model's)" if lic else
        "- **Licence**: the base model's (not known to prunekit: check it before you share this model)",
        f"- **Pruning metric (solver)**: {rec['metric']}{nm}",
        f"- **Allocation**: {rec['allocation']} with options `{opts}`",
        f"- **Target sparsity**: {rec['target_sparsity']:.4f}; realised global sparsity of the decoder-block "
        f"linears: {rec['global_sparsity']:.4f}",
    ]
    cal = rec.get("calibration") or {}
    if cal:
        lines.append(f"- **Calibration**: {cal.get('dataset')} {cal.get('samples')} × {cal.get('seqlen')} tokens, seed {rec.get('seed')}")
    if rec.get("saved_dtype"):
        lines.append(f"- **Stored dtype**: {rec['saved_dtype']}")
    lines += ["", "## Per-block sparsity", "", "| block | planned | realised |", "|---:|---:|---:|"]
    planned = rec.get("planned_sparsity") or [None] * len(rec["layer_sparsity"])
    for i, (p, r) in enumerate(zip(planned, rec["layer_sparsity"])):
        lines.append(f"| {i} | {_fmt(p)} | {_fmt(r)} |")
    if rec.get("perplexity"):
        ev = rec.get("eval") or {}
        lines += ["", "## Measured perplexity", "",
                  f"Sequence length {ev.get('seqlen')}, windows {ev.get('windows') or 'all'} "
                  f"({', '.join(f'{d}: {n} tokens' for d, n in (rec.get('tokens_evaluated') or {}).items())}).", "",
                  "| dataset | perplexity |", "|---|---:|"]
        lines += [f"| {d} | {v:.3f} |" for d, v in rec["perplexity"].items()]
    zs = rec.get("zero_shot") or {}
    if zs:
        lines += ["", "## Zero-shot accuracy (lm-eval)", "", "| task | acc |", "|---|---:|"]
        lines += [f"| {t} | {r['acc']:.4f} |" for t, r in zs.items() if isinstance(r, dict) and "acc" in r]
    if prov.get("argv"):
        # shell-quoted: pasted into a shell, the command gets back exactly this argv (`--eval ''`, spaces)
        lines += ["", "## Reproduce", "", "```bash", shlex.join(prov["argv"]), "```"]
    g = prov.get("git")
    lines += ["", "## Provenance", "",
              f"- created {prov.get('created')}, prunekit "
              + (f"commit {g['commit'][:12]}{' (dirty)' if g['dirty'] else ''}" if g else
                 f"{(prov.get('code') or {}).get('version')} (no git tree; code sha256 "
                 f"{(prov.get('code') or {}).get('digest')})"),
              f"- device {prov.get('device')}, dtype {prov.get('dtype')}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items()),
              "- the full run record is `prunekit_record.json` in this directory", ""]
    return "\n".join(lines)


def block_names(model) -> list[str]:
    """Module names of the decoder blocks (``model.layers.0`` …), as llm-compressor names them."""
    from prunekit.core.architectures import layout
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(b)] for b in layout(model).blocks]


def recipe_yaml(rec: dict, names: list[str]) -> str:
    """The run's per-block plan as an llm-compressor recipe: one Wanda / SparseGPT modifier whose
    ``targets`` are the decoder blocks and whose ``sparsity`` lists prunekit's planned sparsity of
    each, in module order (llm-compressor 0.14 takes a float or a list, one value per target)."""
    import re

    import yaml
    from prunekit.errors import PrunekitError
    metric = rec["metric"]
    if metric not in RECIPE_MODIFIERS:
        raise PrunekitError(f"--export-recipe needs --metric wanda or sparsegpt (llm-compressor has no "
                            f"per-layer {metric} modifier)")
    planned = rec["planned_sparsity"]
    if len(planned) != len(names):
        raise PrunekitError(f"plan has {len(planned)} blocks, the model {len(names)}")
    prefix = {re.sub(r"\d+$", "", n) for n in names}
    if len(prefix) != 1 or [int(n[len(next(iter(prefix))):]) for n in names] != list(range(len(names))):
        raise PrunekitError(f"decoder blocks are not one numbered module list: {names[:3]}")
    args = {"mask_structure": rec.get("nm") or "0:0",
            "targets": [f"re:{re.escape(prefix.pop())}\\d+$"],
            "ignore": ["re:.*lm_head"]}
    if metric == "sparsegpt":  # prunekit's SparseGPT: OBS column blocks of 128, 1 % damping
        args.update(block_size=128, dampening_frac=0.01)
    dump = lambda obj: yaml.safe_dump(obj, sort_keys=False, width=120).rstrip("\n")  # noqa: E731
    ind = " " * 6
    lines = [f"# llm-compressor recipe written by prunekit: {rec['allocation']} allocation "
             f"{json.dumps(rec.get('allocation_options') or {}, sort_keys=True, default=str)},",
             f"# target {rec['target_sparsity']}, planned per-block sparsities of model {rec['model']} "
             "(parameter-weighted block means).",
             "# Use: llmcompressor.oneshot(model=..., dataset=..., recipe=THIS_FILE)",
             "sparsity_stage:", "  sparsity_modifiers:", f"    {RECIPE_MODIFIERS[metric]}:",
             f"{ind}sparsity:  # one value per target block, in module order"]
    lines += [f"{ind}- {round(float(v), 6)}  # {n}" for n, v in zip(names, planned)]
    lines += [ind + ln for ln in dump(args).splitlines()]
    return "\n".join(lines) + "\n"

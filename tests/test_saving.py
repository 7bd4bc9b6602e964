"""Pruned models people can use: --save-model (modes, card, record, use_cache, dtype) and
--export-recipe (an llm-compressor recipe of the per-block plan)."""
from __future__ import annotations

import json
import os
import re
import stat

import pytest
from prunekit.core.runtime import Runtime

ARGS = ["prune", "--model", "tiny-llama", "--metric", "wanda", "--sparsity", "0.6", "--allocation", "owl",
        "--owl-lambda", "0.05", "--calib-samples", "4", "--calib-seqlen", "64", "--eval", "wikitext2",
        "--eval-seqlen", "128", "--eval-windows", "2", "--quiet", "--threads", "1"]


@pytest.mark.parametrize("argv, needle", [
    (["--metric", "magnitude", "--export-recipe", "r.yaml"], "--export-recipe needs --metric"),
    (["--save-dtype", "bf16"], "--save-dtype needs --save-model"),
])
def test_bad_export_flags_fail_before_loading(argv, needle, capsys, tmp_path, monkeypatch):
    from prunekit.cli import main
    monkeypatch.chdir(tmp_path)
    base = ["prune", "--model", "no-such-model-is-loaded", "--sparsity", "0.5"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One CLI run on tiny-llama: --out, --save-model, --export-recipe (umask 022 as on most systems)."""
    if not os.environ.get("PRUNEKIT_DATA_DIR"):
        pytest.skip("PRUNEKIT_DATA_DIR not set")
    from prunekit.cli import main
    d = tmp_path_factory.mktemp("save")
    old = os.umask(0o022)
    try:
        argv = ARGS + ["--out", str(d / "run.json"), "--save-model", str(d / "model"),
                       "--export-recipe", str(d / "recipe.yaml")]
        assert main(argv) == 0
    finally:
        os.umask(old)
    return d, json.loads((d / "run.json").read_text()), argv


pytestmark = pytest.mark.slow  # tiny-llama borrows SmolLM2's tokenizer from the real model cache


def test_saved_files_are_readable(saved):
    d, _, _ = saved
    model = d / "model"
    assert stat.S_IMODE(model.stat().st_mode) == 0o755
    files = [p for p in model.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o644" for p in files}


def test_config_has_use_cache_on_and_weights_round_trip(saved):
    from prunekit.core.loading import load_model
    from prunekit.solvers.prune import measure_sparsity
    d, rec, _ = saved
    assert json.loads((d / "model" / "config.json").read_text())["use_cache"] is True
    model = load_model(str(d / "model")).model
    assert measure_sparsity(model)["layer_sparsity"] == pytest.approx(rec["layer_sparsity"], abs=0)


def test_record_beside_the_weights_is_the_run_record(saved):
    d, rec, argv = saved
    assert json.loads((d / "model" / "prunekit_record.json").read_text()) == rec
    assert rec["provenance"]["argv"] == ["prunekit", *argv]
    assert [m["id"] for m in rec["provenance"]["models"]][-1] == "tiny-llama"


def test_model_card(saved):
    d, rec, argv = saved
    card = (d / "model" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card
    for needle in ("tiny-llama", "random 4-block LLaMA", "wanda", "owl", '"lam": 0.05',
                   f"{rec['perplexity']['wikitext2']:.3f}", " ".join(["prunekit", *argv]),
                   f"torch {rec['provenance']['versions']['torch']}", rec["provenance"]["git"]["commit"][:12]
                   if rec["provenance"]["git"] else "n/a"):
        assert needle in card, needle
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \|$", card, flags=re.M)
    assert [int(r[0]) for r in rows] == list(range(len(rec["layer_sparsity"])))
    assert [float(r[2]) for r in rows] == pytest.approx(rec["layer_sparsity"], abs=1e-4)
    assert [float(r[1]) for r in rows] == pytest.approx(rec["planned_sparsity"], abs=1e-4)


def test_bf16_save_is_half_the_size_and_keeps_the_zeros(saved, tmp_path):
    import torch
    from prunekit.core.loading import load_model
    from prunekit.core.saving import save_model
    d, _, _ = saved
    rt = load_model(str(d / "model"))
    model, tok = rt.model, rt.tokenizer
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    save_model(Runtime.of(model, tok), tmp_path / "bf16", dtype="bf16")
    save_model(Runtime.of(model, tok), tmp_path / "fp32", dtype="fp32")  # the default dtype may already be bf16
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # untouched in memory
    size = lambda p: sum(f.stat().st_size for f in p.glob("*.safetensors"))  # noqa: E731
    ratio = size(tmp_path / "bf16") / size(tmp_path / "fp32")
    print(f"bf16 / fp32 safetensors size: {ratio:.4f}")
    assert 0.45 < ratio < 0.55
    half = load_model(str(tmp_path / "bf16"), dtype="bf16").model
    assert next(half.parameters()).dtype == torch.bfloat16
    for (n, p), q in zip(model.named_parameters(), half.parameters()):
        assert torch.equal(p == 0, q == 0), n


def test_recipe_is_the_per_block_plan(saved):
    import re as _re

    import yaml
    from prunekit.core.architectures import layout
    from prunekit.core.loading import load_model
    d, rec, _ = saved
    recipe = yaml.safe_load((d / "recipe.yaml").read_text())
    (stage,) = recipe.values()
    mod = stage["sparsity_modifiers"]["WandaPruningModifier"]
    model = load_model(str(d / "model")).model
    names = [n for n, m in model.named_modules() if any(m is b for b in layout(model).blocks)]
    # llm-compressor matches its targets against module names: exactly the decoder blocks, in order,
    # and takes one sparsity per target in that order
    pat = mod["targets"][0].removeprefix("re:")
    assert [n for n, _ in model.named_modules() if _re.match(pat, n)] == names
    assert mod["sparsity"] == pytest.approx(rec["planned_sparsity"], abs=1e-6)
    assert len(mod["sparsity"]) == len(names)
    # budget: the parameter-weighted mean of the per-block values is the target
    sizes = [sum(s) for s in layout(model).sizes()]
    mean = sum(s * v for s, v in zip(sizes, mod["sparsity"])) / sum(sizes)
    assert mean == pytest.approx(rec["target_sparsity"], abs=1e-5)
    assert mod["mask_structure"] == "0:0" and mod["ignore"] == ["re:.*lm_head"]


def test_recipe_parses_in_llm_compressor(saved):
    """Where llm-compressor is installed (not a prunekit dependency), its own parser accepts it."""
    pytest.importorskip("llmcompressor")
    from llmcompressor.recipe import Recipe
    d, rec, _ = saved
    recipe = Recipe.create_instance(str(d / "recipe.yaml"))
    (mod,) = recipe.modifiers
    assert type(mod).__name__ == "WandaPruningModifier"
    assert list(mod.sparsity) == pytest.approx(rec["planned_sparsity"], abs=1e-6)


def test_llm_compressor_applies_the_plan(saved):
    """Where llm-compressor is installed: its oneshot Wanda with the exported recipe, on the dense
    model, prunes each block to the same realised sparsity as prunekit's run."""
    pytest.importorskip("llmcompressor")
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from prunekit.core.loading import load_model
    from prunekit.solvers.prune import measure_sparsity
    d, rec, _ = saved
    model = load_model("tiny-llama").model
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (4, 64), generator=g).tolist()
    ds = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * 64] * 4})
    oneshot(model=model, dataset=ds, recipe=str(d / "recipe.yaml"), num_calibration_samples=4, max_seq_length=64)
    assert measure_sparsity(model)["layer_sparsity"] == pytest.approx(rec["layer_sparsity"], abs=1e-3)

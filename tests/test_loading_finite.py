"""NaN or infinite weights are refused at load in every offload mode: the blocks ``--offload disk``
leaves in the checkpoint are read one tensor at a time and checked like the resident weights."""
from __future__ import annotations

import pytest
import torch

from prunekit.errors import PrunekitError

pytestmark = pytest.mark.usefixtures("one_thread")


def _saved(tmp_path, block: int, value: float, name: str = "mlp.down_proj"):
    """A tiny 4-block LLaMA with one non-finite element in block ``block``'s ``name`` weight."""
    from conftest import hf_byte_tokenizer, tiny_model
    m = tiny_model(layers=4, vocab=len(hf_byte_tokenizer()))
    with torch.no_grad():
        m.model.layers[block].get_submodule(name).weight[1, 2] = value
    d = tmp_path / f"bad-{block}"
    m.save_pretrained(d, safe_serialization=True)
    hf_byte_tokenizer().save_pretrained(d)
    return d


@pytest.mark.parametrize("cmd", ["eval", "prune"])
def test_nan_in_a_disk_offloaded_block_refused(cmd, tmp_path, capsys):
    """The last block's weight holds a NaN and stays on disk (``--offload disk``): exit 2, one
    line naming the weight, no results file."""
    from prunekit.cli import main
    d = _saved(tmp_path, 3, float("nan"))
    out = tmp_path / "r.json"
    argv = [cmd, "--model", str(d), "--offload", "disk", "--eval-windows", "1", "--eval-seqlen", "64",
            "--out", str(out)]
    if cmd == "prune":
        argv += ["--sparsity", "0.5", "--calib-samples", "2", "--calib-seqlen", "32"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NaN or infinite" in err, err
    assert "model.layers.3.mlp.down_proj.weight" in err, err
    assert not out.exists()


def test_inf_refused_by_the_library_too(tmp_path):
    from prunekit.core.loading import load_model
    d = _saved(tmp_path, 2, float("-inf"), "self_attn.k_proj")
    with pytest.raises(PrunekitError, match=r"model\.layers\.2\.self_attn\.k_proj\.weight holds NaN or infinite"):
        load_model(str(d), "cpu", "fp32", offload="disk")


def test_overflow_on_cast_refused(tmp_path):
    """A finite fp32 weight beyond fp16's range becomes inf when an fp16 run reads the block: refused
    as the resident load would refuse it."""
    from prunekit.core.loading import load_model
    d = _saved(tmp_path, 1, 1e6)
    load_model(str(d), "cpu", "fp32", offload="disk")  # finite in fp32
    with pytest.raises(PrunekitError, match="layers.1.mlp.down_proj.weight"):
        load_model(str(d), "cpu", "fp16", offload="disk")

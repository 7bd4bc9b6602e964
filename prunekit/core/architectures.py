"""Architectures: where each supported family keeps its decoder blocks and their prunable linears."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from prunekit.errors import PrunekitError

# model_type -> attribute path from the CausalLM to its decoder-block ModuleList
BLOCK_PATHS = {
    "llama": "model.layers", "mistral": "model.layers", "qwen2": "model.layers",
    "qwen3": "model.layers", "smollm3": "model.layers", "gemma3_text": "model.layers",
    "gemma3": "model.language_model.layers", "opt": "model.decoder.layers",
}


@dataclass
class Layout:
    """Where the prunable weights are: decoder blocks and, per block, its nn.Linear names
    in registration order (LLaMA: q,k,v,o,gate,up,down; OPT: q,k,v,out_proj,fc1,fc2)."""
    model_type: str
    blocks: nn.ModuleList
    linear_names: list[str]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def linears(self, i: int) -> dict[str, nn.Linear]:
        mods = dict(self.blocks[i].named_modules())
        return {n: mods[n] for n in self.linear_names}

    def sizes(self) -> list[list[int]]:
        return [[m.weight.numel() for m in self.linears(i).values()] for i in range(self.num_blocks)]


def block_prefix(model) -> str:
    """State-dict prefix of the decoder blocks, e.g. 'model.layers.'."""
    mt = getattr(model.config, "model_type", "?")
    if mt not in BLOCK_PATHS:
        layout(model)  # raises the unsupported-architecture error
    return BLOCK_PATHS[mt] + "."


def find_linears(module: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}


def layout(model) -> Layout:
    mt = getattr(model.config, "model_type", "?")
    path = BLOCK_PATHS.get(mt)
    if path is None:
        raise PrunekitError(
            f"unsupported architecture '{mt}' ({type(model).__name__}); supported: "
            f"{', '.join(sorted(BLOCK_PATHS))}")
    obj = model
    for a in path.split("."):
        obj = getattr(obj, a, None)
        if obj is None:
            raise PrunekitError(f"architecture '{mt}' ({type(model).__name__}) has no '{path}'")
    names = list(find_linears(obj[0]))
    if not names:
        raise PrunekitError(f"no nn.Linear found in the decoder blocks of '{mt}'")
    return Layout(mt, obj, names)

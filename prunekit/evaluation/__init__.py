"""Evaluate: perplexity (WikiText-2, C4, PTB) and zero-shot accuracy through stock lm-eval."""
from prunekit.evaluation.perplexity import perplexity, zero_shot  # noqa: F401

"""Networks and what each task needs from them (loss, metrics)."""

from medfed.models.registry import MODELS, build_model

__all__ = ["MODELS", "build_model"]

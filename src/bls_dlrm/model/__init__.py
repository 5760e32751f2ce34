"""DLRM inference: configurations, deterministic weights, sharded parts, placement plans.

Nothing here knows of MPI or ``torch.distributed``: the parts are plain modules that the
distributed loop (``bls_dlrm.run.infer``) calls in its own order, and ``DLRM`` composes them in
one process as the oracle. See ``dlrm`` for what is bit-identical to the oracle and what
only to float tolerance.
"""

from .config import (
    CONFIGS,
    INTERACTIONS,
    KAGGLE_ROWS,
    TERABYTE_ROW_CAP,
    TERABYTE_ROWS,
    ModelConfig,
    get_config,
)
from .sharding import PLAN_KINDS, plan_shards

# The torch parts load on first use, so the configs and plans (what the workflow and the
# analysis read) come without importing torch.
_TORCH_PARTS = {
    "DLRM": "dlrm",
    "DenseModel": "dlrm",
    "EmbeddingShard": "dlrm",
    "tril_indices": "dlrm",
    "SparseBatch": "sparse",
}


def __getattr__(name: str):
    if name in _TORCH_PARTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_TORCH_PARTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONFIGS",
    "DLRM",
    "INTERACTIONS",
    "KAGGLE_ROWS",
    "PLAN_KINDS",
    "TERABYTE_ROWS",
    "TERABYTE_ROW_CAP",
    "DenseModel",
    "EmbeddingShard",
    "ModelConfig",
    "SparseBatch",
    "get_config",
    "plan_shards",
    "tril_indices",
]

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
from .dlrm import DLRM, DenseModel, EmbeddingShard, tril_indices
from .sharding import PLAN_KINDS, plan_shards
from .sparse import SparseBatch

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

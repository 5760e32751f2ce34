"""A TorchRec DLRM for one of our datasets, and its table-wise sharding on any group.

Notation: T tables, D embedding dim, W ranks.

``build_dlrm`` makes ``torchrec.models.dlrm.DLRM`` (an ``EmbeddingBagCollection`` of T sum
tables with our datasets' row counts, the dense arch, the dot interaction and the over
arch) with weights drawn from one seed, so every rank builds the same model without
talking, and an unsharded copy of it is the reference. Its shape defaults to our Criteo
Kaggle model: D = 16, bottom 13-512-256-64-16, top 512-256-1 (TorchRec's over arch ends
in a linear layer; predictions are ``sigmoid`` of its logits, as our model's).

``shard`` places whole tables on ranks (TorchRec's table-wise sharding, built with
``construct_module_sharding_plan``) by one of our placement plans, wraps the model in
``DistributedModelParallel`` on the given process group (gloo, mpisync, bls: any backend)
without a data-parallel wrapper (inference: nothing to all-reduce), and copies the
reference's table weights into the shards, so sharded and unsharded models hold the same
numbers.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedTensor, PoolingType
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.sharding_plan import construct_module_sharding_plan, table_wise
from torchrec.distributed.types import ShardingEnv, ShardingPlan
from torchrec.models.dlrm import DLRM

from .kjt import feature_keys, table_names

__all__ = ["EBC_PATH", "ShardedDLRM", "build_dlrm", "embedded_sparse", "predict", "shard"]

#: Where DLRM keeps its EmbeddingBagCollection (the module the plan shards).
EBC_PATH = "sparse_arch.embedding_bag_collection"

# TorchRec warns once per table that the dense CPU kernel ignores caching parameters.
logging.getLogger("torchrec.distributed.utils").setLevel(logging.ERROR)


def build_dlrm(
    table_rows: Sequence[int],
    num_dense: int,
    *,
    embedding_dim: int = 16,
    bottom: Sequence[int] = (512, 256, 64),
    top: Sequence[int] = (512, 256),
    seed: int = 0,
) -> DLRM:
    """An unsharded TorchRec DLRM, the same on every rank for the same ``seed``."""
    tables = [
        EmbeddingBagConfig(
            name=name,
            embedding_dim=embedding_dim,
            num_embeddings=int(rows),
            feature_names=[key],
            pooling=PoolingType.SUM,
        )
        for name, key, rows in zip(
            table_names(len(table_rows)), feature_keys(len(table_rows)), table_rows, strict=True
        )
    ]
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        ebc = EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))
        model = DLRM(
            embedding_bag_collection=ebc,
            dense_in_features=num_dense,
            dense_arch_layer_sizes=[*bottom, embedding_dim],
            over_arch_layer_sizes=[*top, 1],
        )
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval().requires_grad_(False)


@dataclass
class ShardedDLRM:
    """A DLRM sharded on one process group: the DMP, its sharded EBC and the dense parts."""

    dmp: DistributedModelParallel
    group: dist.ProcessGroup
    plan: list[list[int]]  # table ids per rank
    keys: list[str]  # KJT keys, table order

    @property
    def dlrm(self) -> DLRM:
        return self.dmp.module

    @property
    def ebc(self):
        """The ``ShardedEmbeddingBagCollection``: ``input_dist``, ``compute_and_output_dist``."""
        return self.dlrm.sparse_arch.embedding_bag_collection


def shard(model: DLRM, group: dist.ProcessGroup, plan: Sequence[Sequence[int]]) -> ShardedDLRM:
    """Shard a copy of ``model`` table-wise on ``group``: table t on the rank whose list in
    ``plan`` holds t (one list per rank of ``group``, every table once)."""
    world = group.size()
    ebc = model.sparse_arch.embedding_bag_collection
    names = [c.name for c in ebc.embedding_bag_configs()]
    if len(plan) != world:
        raise ValueError(f"plan has {len(plan)} ranks' tables, the group has {world} ranks")
    owner = {t: r for r, tables in enumerate(plan) for t in tables}
    if sorted(owner) != list(range(len(names))) or sum(len(p) for p in plan) != len(names):
        raise ValueError(f"plan must list each of the {len(names)} tables exactly once: {plan}")
    module_plan = construct_module_sharding_plan(
        ebc,
        per_param_sharding={
            name: table_wise(rank=owner[t], compute_kernel="dense") for t, name in enumerate(names)
        },
        local_size=world,
        world_size=world,
        device_type="cpu",
    )
    dmp = DistributedModelParallel(
        copy.deepcopy(model),
        env=ShardingEnv.from_process_group(group),
        device=torch.device("cpu"),
        plan=ShardingPlan({EBC_PATH: module_plan}),
        init_data_parallel=False,
    )
    _copy_tables(model, dmp)
    dmp.eval()
    keys = [f for c in ebc.embedding_bag_configs() for f in c.feature_names]
    return ShardedDLRM(dmp=dmp, group=group, plan=[list(p) for p in plan], keys=keys)


def _copy_tables(model: DLRM, dmp: DistributedModelParallel) -> None:
    """The reference's table weights into this rank's shards (every shard, every table)."""
    full = model.state_dict()
    with torch.no_grad():
        for name, value in dmp.state_dict().items():
            if not hasattr(value, "local_shards"):
                continue
            for piece in value.local_shards():
                rows, cols = piece.metadata.shard_offsets
                n, m = piece.metadata.shard_sizes
                piece.tensor.copy_(full[name][rows : rows + n, cols : cols + m])


def embedded_sparse(dlrm: DLRM, pooled: KeyedTensor) -> torch.Tensor:
    """The pooled embeddings as DLRM's sparse arch returns them: (b, T, D)."""
    arch = dlrm.sparse_arch
    parts = pooled.to_dict()
    return torch.cat([parts[name] for name in arch.sparse_feature_names], dim=1).reshape(
        -1, arch.F, arch.D
    )


def predict(dlrm: DLRM, bottom_out: torch.Tensor, pooled: KeyedTensor) -> torch.Tensor:
    """Interaction and over arch on the bottom MLP's output and the pooled embeddings:
    click probabilities (b,). The same operations as ``DLRM.forward`` after its arches."""
    inter = dlrm.inter_arch(
        dense_features=bottom_out, sparse_features=embedded_sparse(dlrm, pooled)
    )
    return torch.sigmoid(dlrm.over_arch(inter)).reshape(-1)

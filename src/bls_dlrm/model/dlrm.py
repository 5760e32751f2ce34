"""DLRM for inference, split into the parts a model-parallel loop runs separately.

The distributed loop (``bls_dlrm.run.infer``) runs, per rank and iteration: ``EmbeddingShard``
lookups of the rank's tables for the *global* batch; the alltoallv, which hands each rank
its batch slice of every table; ``DenseModel.bottom`` on its slice of the dense features;
``DenseModel.top`` (interaction + top MLP) on the slice. ``DLRM`` composes the same parts in
one process and is the oracle the distributed predictions are checked against.

Numerics (float32, CPU), which the tests check:

- Weights are bit-identical wherever they are built: each table and layer draws from its own
  seeded stream (``weights``), whatever else the process holds.
- Embedding lookups are bit-identical to the oracle's, always: a bag is summed by one
  thread in index order, so its result depends only on its own indices, neither on the
  other bags in the call, on the batch slice, nor on the thread count.
- A slice through ``bottom``/``top`` is bit-identical to the oracle run on *the same slice*
  (``DLRM(dense[s], sparse.slice(...))``): same ops on the same shapes.
- Against the oracle run on the *whole* batch it agrees only to float tolerance
  (``rtol=1e-5, atol=1e-6`` is ample): the MLPs are matrix products over the batch, and the
  BLAS picks kernels and blocking by matrix shape, so a row's dot products may round
  differently in a product with another number of rows. On the pinned build (MKL) some
  slice sizes and positions match the whole batch bit for bit and others differ in the last
  bits; nothing promises either. The interaction (one small product per sample) and the
  lookups do not depend on the batch. Changing the thread count did not change results on
  the pinned build (observed, not promised).

So the comparisons that matter for BLS -- every lag bound against the synchronous run, with
the same slices -- are exact by construction. To check a distributed run exactly against
one process, run the oracle per slice (``oracle(dense[lo:hi], sparse.slice(lo, hi))``);
against the oracle on whole batches, compare with a tolerance.

Speed: the model is inference-only (parameters are frozen, ``requires_grad=False``).
Intermediate activations live in per-(thread, batch size) workspaces that are reused
between calls, so a forward does not allocate (and page-fault) megabytes each time; the
results handed out (bottom output, embeddings, probabilities) are always fresh tensors that
the caller may keep across iterations, as a lag-bounded pipeline does. The dot interaction
is one batched matrix product followed by a gather of the strict lower triangle with a
precomputed index.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .sparse import SparseBatch
from .weights import PART_BOTTOM, PART_TOP, linear_init, table_init

__all__ = ["DLRM", "DenseModel", "EmbeddingShard", "tril_indices"]

_MAX_WORKSPACES = 4

#: Embeddings for ``DenseModel.top``: ``(B, T, d)`` in table order, or per-rank parts.
Embedded = torch.Tensor | Sequence[tuple[Sequence[int], torch.Tensor]]


def tril_indices(n: int) -> torch.Tensor:
    """Flat positions ``i * n + j`` of the strict lower triangle (j < i), row by row.

    This is the order of the reference DLRM's dot interaction, so the top MLP's input
    columns mean the same thing as there.
    """
    return torch.tensor([i * n + j for i in range(n) for j in range(i)], dtype=torch.int64)


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


class EmbeddingShard(nn.Module):
    """The embedding tables ``table_ids`` of a config; what one rank holds.

    ``forward(indices, offsets)`` takes the shard's own tables in packed form (see
    ``SparseBatch``: ``offsets`` has one row per held table, in ``table_ids`` order) and
    returns ``(B, len(table_ids), d)``. ``lookup(batch)`` takes a batch of *all* tables and
    reads only the held ones, without copying the others.
    """

    def __init__(self, config: ModelConfig, table_ids: Sequence[int]):
        super().__init__()
        ids = [int(t) for t in table_ids]
        bad = [t for t in ids if not 0 <= t < config.num_tables]
        if bad:
            raise ValueError(f"table ids {bad} outside 0..{config.num_tables - 1}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"table ids repeat: {ids}")
        self.config = config
        self.table_ids: tuple[int, ...] = tuple(ids)
        d = config.embedding_dim
        self.tables = nn.ModuleList(
            nn.EmbeddingBag(
                config.rows[t],
                d,
                mode="sum",
                include_last_offset=True,
                _weight=table_init(config.seed, t, config.rows[t], d),
            )
            for t in ids
        )
        _freeze(self)

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Sum-pooled embeddings ``(B, len(table_ids), d)`` of the shard's own tables."""
        batch = SparseBatch(indices, offsets)
        if batch.num_tables != len(self.table_ids):
            raise ValueError(
                f"offsets has {batch.num_tables} table rows, the shard holds "
                f"{len(self.table_ids)} tables {list(self.table_ids)}"
            )
        return self._pool([batch.table(k) for k in range(batch.num_tables)], batch.batch_size)

    def lookup(self, batch: SparseBatch) -> torch.Tensor:
        """Like ``forward`` for a batch holding every table of the config."""
        if batch.num_tables != self.config.num_tables:
            raise ValueError(
                f"batch has {batch.num_tables} tables, config {self.config.name!r} "
                f"has {self.config.num_tables}"
            )
        return self._pool([batch.table(t) for t in self.table_ids], batch.batch_size)

    def _pool(self, bags: list[tuple[torch.Tensor, torch.Tensor]], batch: int) -> torch.Tensor:
        if not bags:
            return torch.empty(batch, 0, self.config.embedding_dim)
        pooled = [
            F.embedding_bag(idx, table.weight, off, mode="sum", include_last_offset=True)
            for table, (idx, off) in zip(self.tables, bags, strict=True)
        ]
        return torch.stack(pooled, dim=1)


class DenseModel(nn.Module):
    """Bottom MLP, interaction and top MLP: the data-parallel part every rank holds whole."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.bottom_layers = self._mlp(config.num_dense, config.bottom_mlp, PART_BOTTOM)
        self.top_layers = self._mlp(config.top_input_width, config.top_mlp, PART_TOP)
        n = config.num_tables + 1
        self.register_buffer("tril", tril_indices(n), persistent=False)
        _freeze(self)
        self._workspaces: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        # workspaces are scratch and a lock cannot be pickled: copies start afresh
        state = dict(self.__dict__)
        state["_workspaces"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._lock = threading.Lock()

    def _mlp(self, n_in: int, widths: Sequence[int], part: int) -> nn.ModuleList:
        layers = nn.ModuleList()
        for k, n_out in enumerate(widths):
            layer = nn.Linear(n_in, n_out, device="meta")  # skip torch's own random init
            weight, bias = linear_init(self.config.seed, part, k, n_in, n_out)
            layer.weight = nn.Parameter(weight)
            layer.bias = nn.Parameter(bias)
            layers.append(layer)
            n_in = n_out
        return layers

    # -- workspaces ------------------------------------------------------------------------

    def _workspace(self, batch: int) -> dict[str, torch.Tensor]:
        """Scratch tensors for one batch size, private to the calling thread.

        Keyed by inference mode too: tensors made under ``torch.inference_mode`` may not be
        written outside it.
        """
        key = (threading.get_ident(), torch.is_inference_mode_enabled(), batch)
        with self._lock:
            ws = self._workspaces.get(key)
            if ws is None:
                ws = {}
                self._workspaces[key] = ws
                while len(self._workspaces) > _MAX_WORKSPACES:
                    self._workspaces.popitem(last=False)
            else:
                self._workspaces.move_to_end(key)
        return ws

    @staticmethod
    def _scratch(ws: dict[str, torch.Tensor], name: str, *shape: int) -> torch.Tensor:
        t = ws.get(name)
        if t is None:
            t = ws[name] = torch.empty(shape, dtype=torch.float32)
        return t

    def _run_mlp(
        self, x: torch.Tensor, layers: nn.ModuleList, tag: str, sigmoid_last: bool
    ) -> torch.Tensor:
        ws = self._workspace(x.shape[0])
        last = len(layers) - 1
        for k, layer in enumerate(layers):
            if k == last:  # handed out: fresh memory
                out = torch.addmm(layer.bias, x, layer.weight.t())
            else:
                out = self._scratch(ws, f"{tag}{k}", x.shape[0], layer.out_features)
                torch.addmm(layer.bias, x, layer.weight.t(), out=out)
            if k == last and sigmoid_last:
                out.sigmoid_()
            else:
                out.relu_()
            x = out
        return x

    # -- the three steps -------------------------------------------------------------------

    def bottom(self, dense: torch.Tensor) -> torch.Tensor:
        """Bottom MLP: dense features ``(B, num_dense)`` -> ``(B, d)``."""
        if dense.dim() != 2 or dense.shape[1] != self.config.num_dense:
            raise ValueError(
                f"dense must have shape (batch, {self.config.num_dense}), got {tuple(dense.shape)}"
            )
        dense = dense.to(torch.float32).contiguous()
        return self._run_mlp(dense, self.bottom_layers, "bottom", sigmoid_last=False)

    def interact(self, bottom_out: torch.Tensor, embedded: Embedded) -> torch.Tensor:
        """Top MLP input ``(B, top_input_width)``; a view into a workspace (reused)."""
        cfg = self.config
        b, d, n = bottom_out.shape[0], cfg.embedding_dim, cfg.num_tables + 1
        if bottom_out.shape != (b, d):
            raise ValueError(f"expected bottom_out (B, {d}), got {tuple(bottom_out.shape)}")
        ws = self._workspace(b)
        vectors = self._scratch(ws, "vectors", b, n, d)  # [bottom output, T embeddings]
        vectors[:, 0, :] = bottom_out
        self._place_embeddings(vectors, embedded)
        if cfg.interaction == "cat":
            return vectors.view(b, n * d)
        gram = self._scratch(ws, "gram", b, n, n)
        torch.bmm(vectors, vectors.transpose(1, 2), out=gram)
        pairs = self._scratch(ws, "pairs", b, self.tril.numel())
        torch.index_select(gram.view(b, n * n), 1, self.tril, out=pairs)
        features = self._scratch(ws, "features", b, cfg.top_input_width)
        features[:, :d] = bottom_out
        features[:, d:] = pairs
        return features

    def _place_embeddings(self, vectors: torch.Tensor, embedded: Embedded) -> None:
        b, num_tables, d = vectors.shape[0], self.config.num_tables, self.config.embedding_dim
        if isinstance(embedded, torch.Tensor):
            if embedded.shape != (b, num_tables, d):
                raise ValueError(
                    f"expected embedded (B={b}, T={num_tables}, d={d}), got {tuple(embedded.shape)}"
                )
            vectors[:, 1:, :] = embedded
            return
        seen = [False] * num_tables
        for tables, part in embedded:
            tables = [int(t) for t in tables]
            if part.shape != (b, len(tables), d):
                raise ValueError(
                    f"part for tables {tables} has shape {tuple(part.shape)}, "
                    f"expected ({b}, {len(tables)}, {d})"
                )
            for t in tables:
                if not 0 <= t < num_tables or seen[t]:
                    raise ValueError(f"table {t} is out of range or given twice")
                seen[t] = True
            if not tables:
                continue
            lo = tables[0]
            if tables == list(range(lo, lo + len(tables))):  # a block: one plain copy
                vectors[:, 1 + lo : 1 + lo + len(tables), :] = part
            else:
                vectors[:, [1 + t for t in tables], :] = part
        missing = [t for t in range(num_tables) if not seen[t]]
        if missing:
            raise ValueError(f"no embeddings given for tables {missing}")

    def top(self, bottom_out: torch.Tensor, embedded: Embedded) -> torch.Tensor:
        """Interaction + top MLP: click probabilities ``(B,)`` in (0, 1).

        ``embedded`` is every table's pooled embeddings for the slice: either one tensor
        ``(B, T, d)`` in table order, or the parts as received from the exchange, a sequence
        of ``(table_ids, tensor (B, len(table_ids), d))`` covering every table once (saves
        assembling them in table order first).
        """
        features = self.interact(bottom_out, embedded)
        return self._run_mlp(features, self.top_layers, "top", sigmoid_last=True).view(-1)

    def forward(self, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        return self.top(self.bottom(dense), embedded)


class DLRM(nn.Module):
    """The whole model in one process: the oracle for the distributed predictions."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embeddings = EmbeddingShard(config, range(config.num_tables))
        self.dense = DenseModel(config)

    def forward(self, dense: torch.Tensor, sparse: SparseBatch) -> torch.Tensor:
        """Click probabilities ``(B,)`` for dense features ``(B, num_dense)`` and all tables."""
        if sparse.batch_size != dense.shape[0]:
            raise ValueError(f"dense has {dense.shape[0]} samples, sparse has {sparse.batch_size}")
        return self.dense.top(self.dense.bottom(dense), self.embeddings.lookup(sparse))

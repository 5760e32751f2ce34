"""BLS inside TorchRec: sharded EmbeddingBagCollection inference that lets a slow rank lag.

TorchRec shards embedding tables with ``DistributedModelParallel``; on CPU its exchanges
are ``torch.distributed.all_to_all_single(..., async_op=True)`` on the sharding group, so a
"bls" group already runs it. But its forward resolves every awaitable before it returns:
each batch is a synchronous exchange whatever the backend. This package keeps batches in
flight through TorchRec's public sharded-module API instead (``input_dist``,
``compute_and_output_dist`` and their awaitables):

- ``model``     a TorchRec DLRM (``torchrec.models.dlrm.DLRM``) for one of our datasets,
                seeded weights, sharded table-wise by ``DistributedModelParallel`` on a
                process group of any backend
- ``kjt``       our synthetic batches as ``KeyedJaggedTensor`` s (each rank its slice)
- ``pipeline``  the inference loop: every one of the three exchange streams of a batch
                (KJT splits, KJT lengths and values, pooled embeddings) waits the exchange
                it posted ``L`` steps earlier, so a slow rank may fall ``L`` steps behind
- ``bench``     ``bls-dlrm bench-torchrec``: stock TorchRec over gloo and mpisync against
                the pipelined loop over bls, side by side

TorchRec is an optional extra (``pip install 'bls-dlrm[torchrec]'``, see
``requirements-torchrec.txt``); nothing else in the package imports it. :func:`require`
checks it is there and says how to install it when not.
"""

from __future__ import annotations

import importlib

__all__ = ["INSTALL_HINT", "TorchRecMissingError", "require"]

INSTALL_HINT = (
    "TorchRec is not installed; it is the optional extra of bls-dlrm: "
    "pip install --no-deps -r requirements-torchrec.txt "
    "(exact pins for torch 2.13; --no-deps keeps pip from replacing the CPU torch "
    "or pulling the GPU fbgemm-gpu that torchrec's metadata names)"
)


class TorchRecMissingError(ImportError):
    """TorchRec (or FBGEMM) is not importable; the message says how to install it."""


def require() -> None:
    """Import torchrec and fbgemm_gpu, or raise :class:`TorchRecMissingError`."""
    for name in ("torchrec", "fbgemm_gpu"):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise TorchRecMissingError(f"{INSTALL_HINT} [{name}: {exc}]") from None

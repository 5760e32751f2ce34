"""The torch.distributed backend "mpisync" beside "bls" and "gloo" in one process.

The all-to-all cases of the "bls" tests run on "mpisync" too (``test_torch_backend.py``,
parametrized over both backends). Here: several groups of different backends in one
process, as the DLRM loop makes them (a gloo default group, then "bls" groups with
different lag bounds, an "mpisync" group and a gloo group), bit-identical to gloo; the
blocking and nonblocking all-to-all of "mpisync"; and the lifetime of a group
(``shutdown`` frees the communicator even when closing fails, ``abort`` leaves nothing
that MPI may still touch unreferenced).
"""

from __future__ import annotations

import pytest
from comm_ranks import run_program

pytestmark = pytest.mark.mpi


def test_groups_of_every_backend_in_one_process(mpirun):
    run_program(mpirun, 3, "multi_backend", timeout=180)

"""The torch.distributed backend "bls" against expected values, gloo and DDP.

The all_to_all cases follow torch's own distributed test suite (equal split, unequal
split with ``in_splits = [i + 1 for i in group]``, the list form, complex tensors), run
on the world group and on a subgroup, for int64, float32, bfloat16 and complex64, plus
cases of our own: zero-length pieces, input aliasing output, non-contiguous output, and
``async_op=True`` with ``wait`` / ``is_completed`` / ``get_future``. Every rank knows what
every peer sends, so each checks its result locally, bit for bit, and against a gloo
group over the same ranks in the same launch.

The rank programs are in ``tests/rank_programs``; every rank reports to its own file.
"""

from __future__ import annotations

import socket

import pytest
from comm_ranks import run_program

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("backend", ["bls", "mpisync"])
def test_all_to_all_like_torch_suite_and_gloo(mpirun, backend):
    run_program(mpirun, 4, "all_to_all", backend, env={"BLS_LAG_BOUND": "3"}, timeout=240)


def test_collectives_subgroups_bad_input_and_destroy(mpirun):
    run_program(mpirun, 4, "collectives", timeout=240)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_env_init_reversed_ranks_lag_bound_variable_and_ddp(mpirun):
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    run_program(mpirun, 2, "env_init", env=env, timeout=180)


def test_every_call_drives_progress(mpirun):
    run_program(mpirun, 3, "progress", timeout=120)


@pytest.mark.parametrize("backend", ["bls", "mpisync"])
def test_fidelity_with_gloo(mpirun, backend):
    run_program(mpirun, 3, "fidelity", backend, timeout=180)

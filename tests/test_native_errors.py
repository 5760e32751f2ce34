"""Error paths and waiting of the native backends, with the bugs a rewrite invites in mind.

- counts of two ranks that disagree fail the Work (never garbage reported as success), in
  the single and the list form, and leave the group usable;
- destroying a group after a timed-out exchange takes one timeout, not two;
- MPI's thread level is checked: a second thread is refused below SERIALIZED, served
  (locked) at MPI_THREAD_MULTIPLE;
- a blocked rank sleeps (its CPU time while a peer is a second late is small), a
  ``Work.wait(0.3 s)`` raises within about a second, and the lag bound blocks exactly at
  exchange ``i - L - 1`` (a peer that has posted exactly ``k`` exchanges).

The rank programs are in ``tests/rank_programs``; every rank reports to its own file.
"""

from __future__ import annotations

import pytest
from comm_ranks import run_program

pytestmark = pytest.mark.mpi


def test_count_mismatch_fails_the_work_and_the_group_goes_on(mpirun):
    run_program(mpirun, 2, "count_mismatch", timeout=120)


def test_destroy_after_a_timeout_takes_one_timeout(mpirun):
    run_program(mpirun, 2, "destroy_after_timeout", timeout=120)


@pytest.mark.parametrize("level", ["funneled", "multiple"])
def test_thread_level_is_checked(mpirun, level):
    run_program(mpirun, 2, "threads", level, timeout=120)


def test_late_peer_sleeps_times_out_and_bounds_the_lag_exactly(mpirun):
    run_program(mpirun, 2, "late_peer", timeout=60)

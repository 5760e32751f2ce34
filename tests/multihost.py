"""The ``netns_hosts`` fixture: MPI ranks on several namespace "hosts" of this machine.

Usage in a test::

    def test_x(netns_hosts):
        hosts = netns_hosts(2, ranks_per_host=2, monotonic_offsets=[0, 1000])
        result = hosts.run(["python", "x.py"], timeout=60)   # CompletedProcess, never checked
        hosts.argv(["python", "x.py"])        # fails the test on a non-zero exit or timeout
        hosts.script("print(1)")              # a snippet, as the mpirun fixture runs it
        hosts.mpiexec_args                    # [mpiexec, -iface, ..., -hosts, a1:2,a2:2]
        hosts.exec_on(1, ["hostname"])        # one command on host 2, no MPI
        hosts.hostnames                       # each host's own hostname

Ranks fill the hosts in order (ranks 0..k-1 on host 1). Every host made by a test is
removed when the test ends, pass or fail. Where namespaces cannot be made (not root, no
``ip`` or ``unshare``, no time namespaces for an offset) the test is skipped with the
reason; a subnet already in use here fails it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from conftest import MPI_TIMEOUT, RankFiles, run_or_fail, with_rank_files, write_script

from bls_dlrm.harness.hosts import HostsError, NetnsHosts, unavailable_reason


@functools.cache
def _reason(time_namespace: bool) -> str | None:
    return unavailable_reason(time_namespace=time_namespace)


class TestHosts(NetnsHosts):
    """:class:`NetnsHosts` with the ``mpirun`` fixture's ways to run and fail a test."""

    __test__ = False  # not a test class, despite its name

    def __init__(self, tmp_path: Path, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tmp_path = tmp_path
        self.count = 0

    def script(self, code: str, *args: str, timeout: float = MPI_TIMEOUT, env=None, **kw):
        self.count += 1
        path = write_script(self.tmp_path / f"multihost_script_{self.count}.py", code)
        return self.argv(["python", str(path), *args], timeout=timeout, env=env, **kw)

    def argv(self, argv, *, timeout: float = MPI_TIMEOUT, env=None, expect_ok=True, nprocs=None):
        """Ranks on the hosts, each writing its output to files of its own (as ``mpirun``)."""
        self.count += 1
        files = RankFiles(self.tmp_path / f"hosts_ranks_{self.count}")
        cmd = with_rank_files(self.command(argv, nprocs), files)
        return run_or_fail(
            lambda: self._run(cmd, timeout, env, self.tmp_path, False),
            f"ranks on {self.n} hosts",
            timeout,
            expect_ok,
            files,
        )


@pytest.fixture
def netns_hosts(tmp_path):
    """A factory ``netns_hosts(n, ranks_per_host=1, monotonic_offsets=None) -> TestHosts``."""
    made: list[TestHosts] = []

    def make(n: int = 2, ranks_per_host=1, monotonic_offsets=None, subnet=None) -> TestHosts:
        reason = _reason(monotonic_offsets is not None)
        if reason is not None:
            pytest.skip(f"no namespace hosts here: {reason}")
        hosts = TestHosts(tmp_path, n, ranks_per_host, monotonic_offsets, subnet=subnet)
        made.append(hosts)
        try:
            hosts.up()
        except HostsError as exc:
            pytest.fail(f"could not make {n} namespace hosts: {exc}")
        return hosts

    try:
        yield make
    finally:
        for hosts in made:
            hosts.cleanup()

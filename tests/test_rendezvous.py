"""The MPI rendezvous's store client: loopback only for ranks on rank 0's own host."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch.distributed as dist

from bls_dlrm.comm import rendezvous

UNRESOLVABLE = "bls-no-such-host.invalid"  # .invalid never resolves (RFC 2606)
TIMEOUT = timedelta(seconds=2)


@pytest.fixture
def server():
    store = dist.TCPStore("127.0.0.1", 0, 2, True, timeout=TIMEOUT, wait_for_workers=False)
    yield store


def test_same_host_falls_back_to_loopback(server, monkeypatch):
    """Rank 0's host name does not resolve, but this rank runs on that host: loopback."""
    monkeypatch.setattr(rendezvous.socket, "gethostname", lambda: UNRESOLVABLE)
    client = rendezvous.connect_store(UNRESOLVABLE, server.port, 2, TIMEOUT, rank=1)
    client.set("from-rank-1", "yes")
    assert server.get("from-rank-1") == b"yes"


def test_other_host_says_what_to_set(server, monkeypatch):
    """On another host, loopback would be some other machine's port: a clear error instead."""
    monkeypatch.setattr(rendezvous.socket, "gethostname", lambda: "node-b")
    with pytest.raises(RuntimeError) as err:
        rendezvous.connect_store(UNRESOLVABLE, server.port, 2, TIMEOUT, rank=1)
    text = str(err.value)
    assert "rank 1 on host 'node-b'" in text
    assert f"{UNRESOLVABLE}:{server.port}" in text
    assert "MASTER_ADDR" in text and "MASTER_PORT" in text

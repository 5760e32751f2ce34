"""env:// rendezvous with reversed ranks, BLS_LAG_BOUND, and DDP on "bls" (2 ranks).

See tests/test_torch_backend.py.
"""

import copy
import os

import torch
import torch.distributed as dist
from common import DTYPES, count, engine, piece, raises, report
from mpi4py import MPI

from bls_dlrm.comm import BLSOptions
from bls_dlrm.comm.torch_backend import default_lag_bound

# env:// with every variable set: torch's own rendezvous. The torch ranks are the MPI
# ranks reversed, so the backend has to map one onto the other.
mpi_rank, P = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
assert os.environ["MASTER_ADDR"] == "127.0.0.1" and os.environ["WORLD_SIZE"] == str(P)
os.environ["RANK"] = str(P - 1 - mpi_rank)
dist.init_process_group("bls", init_method="env://")
rank = dist.get_rank()
assert rank == P - 1 - mpi_rank and dist.get_world_size() == P
world = engine()
assert world.rank() == rank and world.lag_bound == 0
for dtype in DTYPES:
    in_splits = [count(rank, d, 5) + 1 for d in range(P)]
    out_splits = [count(s, rank, 5) + 1 for s in range(P)]
    inp = torch.cat([piece(rank, d, n, dtype, 5) for d, n in enumerate(in_splits)])
    out = torch.empty(sum(out_splits), 3, dtype=dtype)
    dist.all_to_all_single(out, inp, out_splits, in_splits)
    exp = torch.cat([piece(s, rank, n, dtype, 5) for s, n in enumerate(out_splits)])
    assert torch.equal(out, exp), dtype
t = torch.tensor([float(rank)])
dist.broadcast(t, src=0)  # torch rank 0 is the last MPI rank
assert t.item() == 0.0

# BLS_LAG_BOUND: read when a group is made; an option wins over it; bad values are errors
os.environ["BLS_LAG_BOUND"] = "4"
assert default_lag_bound() == 4
g = dist.new_group()
assert engine(g).lag_bound == 4
g = dist.new_group(pg_options=BLSOptions(lag_bound=1))
assert engine(g).lag_bound == 1
for bad in ("-1", "two", "1.5"):
    os.environ["BLS_LAG_BOUND"] = bad
    raises(ValueError, default_lag_bound, match="BLS_LAG_BOUND")
    raises(ValueError, dist.new_group, match="BLS_LAG_BOUND")
os.environ["BLS_LAG_BOUND"] = " "
assert default_lag_bound() == 0

# -- DDP on "bls": the gradients of gloo's DDP, the mean of the local ones, on every rank ----
# (in this 2-rank launch: DDP's first construction spends seconds per rank on imports)
gloo = dist.new_group(backend="gloo")
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
ref, model_g = copy.deepcopy(model), copy.deepcopy(model)
ddp = torch.nn.parallel.DistributedDataParallel(model, init_sync=False)
ddp_g = torch.nn.parallel.DistributedDataParallel(model_g, process_group=gloo, init_sync=False)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
opt_g = torch.optim.SGD(model_g.parameters(), lr=0.1)
loss_fn = torch.nn.MSELoss()


def batch(q, step):
    g = torch.Generator().manual_seed(100 * step + q)
    return torch.randn(4, 6, generator=g), torch.randn(4, 3, generator=g)


for step in range(2):
    x, y = batch(rank, step)
    loss_fn(ddp(x), y).backward()
    loss_fn(ddp_g(x), y).backward()
    local = []
    for q in range(P):
        ref.zero_grad()
        loss_fn(ref(batch(q, step)[0]), batch(q, step)[1]).backward()
        local.append([p.grad.clone() for p in ref.parameters()])
    for k, (p, pg) in enumerate(zip(model.parameters(), model_g.parameters(), strict=True)):
        mean = sum(grads[k] for grads in local) / P
        assert p.grad is not None and p.grad.abs().sum() > 0
        assert torch.allclose(p.grad, mean, rtol=1e-5, atol=1e-7), (step, k)
        assert torch.allclose(p.grad, pg.grad, rtol=1e-5, atol=1e-7), (step, k)
    flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy().tobytes()
    assert len(set(MPI.COMM_WORLD.allgather(flat))) == 1, "gradients differ between ranks"
    opt.step()
    opt.zero_grad()
    opt_g.step()
    opt_g.zero_grad()
    ref.load_state_dict(model.state_dict())

dist.destroy_process_group()
report("env_init")

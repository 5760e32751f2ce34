# Two entry points for a fresh machine (see README.md):
#   make test       set up .venv (pip only) and run the test suite
#   make reproduce  set up .venv and run the default Snakemake workflow
# Re-running skips the install while requirements and pyproject are unchanged.

PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The optional TorchRec extra, installed --no-deps (see requirements-torchrec.txt).
TORCHREC_STAMP := $(VENV)/.installed-torchrec

export OMP_NUM_THREADS ?= 1

.PHONY: test test-fast test-slurm reproduce venv torchrec lint format bench clean-venv

venv: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The editable install also compiles the native backends (setup.py, src/bls_dlrm/comm/csrc;
# one compiler process, about a minute on 2 cores).
NATIVE_SRC := setup.py $(wildcard src/bls_dlrm/comm/csrc/*)

$(STAMP): $(VENV)/bin/python requirements.txt requirements-dev.txt pyproject.toml $(NATIVE_SRC)
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(TORCHREC_STAMP): $(STAMP) requirements-torchrec.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-torchrec.txt
	$(BIN)/python -c "import torch, torchrec, fbgemm_gpu; print('torchrec', torchrec.__version__, 'on torch', torch.__version__)"
	touch $@

torchrec: $(TORCHREC_STAMP)

# BLS_DLRM_REQUIRE_TORCHREC: the TorchRec tests fail instead of skipping without the extra.
test: $(STAMP) $(TORCHREC_STAMP)
	$(BIN)/ruff check src tests notebooks
	BLS_DLRM_REQUIRE_TORCHREC=1 $(BIN)/python -m pytest

# Under a minute: no rank launched, no workflow run, no notebook executed.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not mpi and not slow and not workflow"

# The smoke workflow through profiles/slurm on a one-node Slurm cluster started here, then
# one launch over a two-node cluster of namespace hosts (root; installs slurm-wlm and munge
# with apt-get when missing); see profiles/slurm/README.md.
test-slurm: $(STAMP)
	$(BIN)/python tests/slurm_cluster.py smoke
	$(BIN)/python tests/slurm_cluster.py multinode

reproduce: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --workflow-profile profiles/local

lint: $(STAMP)
	$(BIN)/ruff check src tests notebooks
	$(BIN)/ruff format --check src tests notebooks
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint

format: $(STAMP)
	$(BIN)/ruff format src tests notebooks
	$(BIN)/ruff check --fix src tests notebooks
	$(BIN)/snakefmt Snakefile workflow

bench: $(STAMP)
	$(BIN)/bls-dlrm bench-a2a --ranks 4

clean-venv:
	rm -rf $(VENV)

# Helpers of torchrec.smk: its constants and the workloads' datasets and delays, read from
# the main sweep's config through common.smk (SCENARIOS, model_dataset, resolved_delay).
import json
import shlex

TORCHREC_DIR = "results/torchrec"
TORCHREC_WORKLOADS = ("balanced", "rotating-2.5x", "skew-pooling")
TORCHREC_SERIES = "gloo,mpisync,bls:0,bls:4,bls:8"
TORCHREC_REPETITIONS = 5
TORCHREC_ITERATIONS = 300
TORCHREC_RANKS = 2
TORCHREC_SUMMARY = f"{TORCHREC_DIR}/torchrec.csv"
TORCHREC_RUNS = f"{TORCHREC_DIR}/torchrec_runs.csv"


def _torchrec_model():
    """The sweep's first synthetic model (the one the main claims are judged on)."""
    for model in config["models"]:
        if "criteo" not in model:
            return model
    raise WorkflowError("torchrec: the config has no synthetic model")


def _torchrec_scenarios():
    missing = [name for name in TORCHREC_WORKLOADS if name not in SCENARIOS]
    if missing:
        raise WorkflowError(f"torchrec: the config has no scenario {missing}")
    return [SCENARIOS[name] for name in TORCHREC_WORKLOADS]


def torchrec_manifests(wildcards):
    """Input function: the datasets of the TorchRec workloads."""
    model, seed = _torchrec_model(), config["seeds"][0]
    return sorted(
        {
            f"{model_dataset(model, sc['data'], seed)}/manifest.json"
            for sc in _torchrec_scenarios()
        }
    )


def torchrec_workload_args(wildcards):
    """Params function: one `--workload NAME DATASET PLAN DELAY` per workload."""
    model, seed = _torchrec_model(), config["seeds"][0]
    args = []
    for sc in _torchrec_scenarios():
        delay = json.dumps(resolved_delay(sc, model, seed), sort_keys=True)
        dataset = model_dataset(model, sc["data"], seed)
        args += ["--workload", sc["name"], dataset, sc["plan"], delay]
    return " ".join(shlex.quote(a) for a in args)

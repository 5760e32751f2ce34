# Serving sweep (config section `serving`; absent: no serving runs): query latency under an
# offered load, `bls-dlrm serve` in open loop (src/bls_dlrm/serve.py).
#
# One launch per serving workload and repetition, results/serving/scenario~S/rep~R/:
# calibration of the synchronous candidates (the highest closed-loop capacity is the
# launch's synchronous series, chosen before any load runs), then every offered load (a
# fraction of that capacity) for the synchronous series and BLS at the configured lag
# bounds, shuffled per load, then the capacity search at the SLO per series. The launch
# reads the workload's dataset, delays and placement from the same scenario as the closed
# loop. Its report, serve.json, is the output; `serving_tables` turns the reports into
# results/tables/serving.parquet and capacity.parquet for fig6_serving and the claims.

SERVING = config.get("serving")
SERVING_DIR = "results/serving"
SERVING_PATTERN = "scenario~{scenario}/rep~{rep}"
SERVE_JSON = f"{SERVING_DIR}/{SERVING_PATTERN}/serve.json"
SERVING_TABLES = {
    name: f"{TABLES_DIR}/{name}.parquet" for name in ("serving", "capacity")
}


if SERVING:
    for _name in SERVING["workloads"]:
        if _name not in SCENARIOS:
            raise config_error(
                "serving.workloads",
                f"{_name!r} is not a scenario; known: {', '.join(sorted(SCENARIOS))}",
            )


class _Axes(dict):
    """Wildcards of a closed-loop launch (item and attribute access), for run_config."""

    __getattr__ = dict.__getitem__


def serving_axes(wildcards):
    return _Axes(
        scenario=wildcards.scenario,
        ranks=str(SERVING["ranks"]),
        model=config["models"][0]["name"],
        seed=str(config["seeds"][0]),
        rep=wildcards.rep,
    )


def serving_reports():
    """Every serving launch's report (none without a `serving` section)."""
    if not SERVING:
        return []
    return [
        SERVE_JSON.format(scenario=name, rep=rep)
        for name in SERVING["workloads"]
        for rep in range(SERVING["repetitions"])
    ]


def serve_config_yaml(wildcards):
    """Params function: the `bls-dlrm serve` config (run keys + `serve`) as YAML text."""
    axes = serving_axes(wildcards)
    cfg = run_config(axes)
    cfg["series"] = [f"bls:{lag}" for lag in SERVING["lag_bounds"]]
    cfg["run_id"] = f"serving/{SERVING_PATTERN.format(**wildcards)}"
    keys = ("loads", "duration_s", "warmup_s", "sizes", "max_batch", "max_wait_s")
    cfg["serve"] = {key: SERVING[key] for key in keys} | {
        "reference": list(SERVING["synchronous"]),
        "serve_reference": True,
        "calibrate_iterations": SERVING["calibrate_iterations"],
        # every repetition draws its own arrivals; the seed is in the log
        "seed": 1000 * int(axes["seed"]) + int(wildcards.rep),
        "capacity": SERVING["capacity"],
    }
    return yaml.dump(cfg, Dumper=YAML_DUMPER, sort_keys=False).rstrip("\n")


def serve_dataset_manifest(wildcards):
    return run_dataset_manifest(serving_axes(wildcards))


def serve_bind_flag(wildcards):
    return run_bind_flag(serving_axes(wildcards))


def serve_runtime(wildcards):
    """Minutes to ask a scheduler for: calibrations, loads and capacity probes, x safety."""
    s = SERVING
    probes = s["capacity"]["probes"] if s.get("capacity") else 0
    series = 1 + len(s["lag_bounds"])
    seconds = (
        config["estimate"]["startup_s"]
        + len(s["synchronous"]) * 5
        + series * (len(s["loads"]) + probes + 1) * (1.3 * s["duration_s"] + 1)
    )
    return max(2, math.ceil(seconds * config["estimate"]["safety"] / 60))


if SERVING:

    rule serve:
        input:
            dataset=serve_dataset_manifest,
        output:
            SERVE_JSON,
        log:
            f"{LOG_DIR}/serving/{SERVING_PATTERN}.log",
        benchmark:
            f"{BENCH_DIR}/serving/{SERVING_PATTERN}.tsv"
        wildcard_constraints:
            scenario="|".join(SERVING["workloads"]),
        conda:
            CONDA_ENV
        threads: SERVING["ranks"]
        resources:
            mpi_ranks=SERVING["ranks"],
            tasks=SERVING["ranks"],
            mpi=MPIEXEC,
            runtime=serve_runtime,
        params:
            mpiexec=MPIEXEC,
            bls_dlrm=BLS_DLRM,
            out=lambda wildcards, output: str(Path(output[0]).parent),
            config=serve_config_yaml,
            omp_threads=run_threads,
            bind=serve_bind_flag,
            ranks=SERVING["ranks"],
        message:
            "Serve {wildcards.scenario} / rep {wildcards.rep}: calibration, offered loads, capacity at the SLO"
        shell:
            "mkdir -p {params.out:q}"
            " && printf '%s\\n' {params.config:q} > {params.out:q}/run.yaml"
            " && OMP_NUM_THREADS={params.omp_threads} {params.mpiexec:q} {params.bind} -n {params.ranks}"
            " {params.bls_dlrm:q} serve --config {params.out:q}/run.yaml --out {params.out:q}"
            " > {log:q} 2>&1"

    rule serving_tables:
        input:
            serving_reports(),
        output:
            **SERVING_TABLES,
        log:
            f"{LOG_DIR}/serving_tables.log",
        conda:
            CONDA_ENV
        params:
            bls_dlrm=BLS_DLRM,
            out=TABLES_DIR,
            reports=len(serving_reports()),
        message:
            "Serving tables of {params.reports} reports -> {params.out}"
        shell:
            "{params.bls_dlrm:q} serve-tables {input:q} --out {params.out:q} > {log:q} 2>&1"

# The sweep design built from the validated config (included after common.smk): one row
# per launch (a Paramspace), the series, the datasets, the real Criteo data, the dataset
# jobs' arguments, the estimates, the design table, and the serving sweep's launches.

# -- the design: one row per launch ----------------------------------------------------
#
# A launch is one workload (scenario x ranks x model x seed) and one repetition: it runs
# every series (gloo, mpi, bls at each lag bound) in one `mpiexec`, in an order shuffled by
# `shuffle_seed + rep` (bls_dlrm.run.infer), so the series of a repetition share the machine's
# state and repetitions interleave. Each series writes its own run folder below the
# launch's: .../rep~R/<series label>/rank{r}.jsonl.


def series_of(cfg):
    """The series of every launch, in config order: gloo, mpi, bls at each lag bound."""
    series = []
    for collective in cfg["collectives"]:
        if collective == "bls":
            series += [Series("bls", int(lag)) for lag in cfg["lag_bounds"]]
        else:
            series.append(Series(collective))
    return series


def _design_frame(cfg):
    rows = [
        (scenario["name"], ranks, model["name"], seed, rep)
        for scenario in cfg["scenarios"]
        for ranks in scenario_ranks(scenario, cfg)
        for model in cfg["models"]
        for seed in cfg["seeds"]
        for rep in range(scenario_repetitions(scenario, cfg))
    ]
    return pd.DataFrame(rows, columns=list(AXES))


SERIES = series_of(config)
SERIES_LABELS = [s.folder for s in SERIES]
PARAMSPACE = Paramspace(_design_frame(config))
RUN_PATTERN = PARAMSPACE.wildcard_pattern
LAUNCH_DIRS = [f"{RUNS_DIR}/{instance}" for instance in PARAMSPACE.instance_patterns]
#: Every run folder (one per launch and series): what the tables read.
RUN_DIRS = [f"{launch}/{label}" for launch in LAUNCH_DIRS for label in SERIES_LABELS]
RANK_COUNTS = sorted(set(PARAMSPACE.dataframe["ranks"].astype(int)))

RUN_DIR = f"{RUNS_DIR}/{RUN_PATTERN}"
RUN_LOG = f"{LOG_DIR}/runs/{RUN_PATTERN}.log"
RUN_BENCHMARK = f"{BENCH_DIR}/runs/{RUN_PATTERN}.tsv"


def rank_logs(ranks, run_dir=RUN_DIR):
    """The log files a launch of ``ranks`` ranks leaves when, and only when, it finishes.

    One per rank and series; a series' logs are renamed into place when that series ends,
    and a failed launch loses all of them (snakemake removes a failed job's outputs), so
    a rerun redoes the whole launch and keeps its series interleaved.
    """
    return [
        f"{run_dir}/{label}/rank{r}.jsonl"
        for label in SERIES_LABELS
        for r in range(ranks)
    ]


ALL_RANK_LOGS = [
    log
    for run_dir, ranks in zip(LAUNCH_DIRS, PARAMSPACE.dataframe["ranks"])
    for log in rank_logs(int(ranks), run_dir)
]


def _axes(wildcards):
    """The design row of a launch, typed: {'scenario': 'balanced', 'ranks': 2, ...}."""
    return {
        axis: (
            int(wildcards[axis])
            if axis in ("ranks", "seed", "rep")
            else wildcards[axis]
        )
        for axis in AXES
    }


def dataset_name(model, data, seed):
    """One dataset per distinct (model shape, index distribution, pooling, seed)."""
    skew = data["index_dist"]
    if skew == "zipf":
        lo_hi = data.get("zipf_alpha_range")
        skew = (
            f"zipf{lo_hi[0]:g}-{lo_hi[1]:g}" if lo_hi else f"zipf{data['zipf_alpha']:g}"
        )
    pooling = f"{data['pooling']}{data['pooling_k']}"
    if data["pooling"] in ("heavy", "bursty"):
        cap = data.get("pooling_max")
        capped = f"max{cap}" if cap else ""
        pooling = f"{pooling}s{data.get('pooling_sigma', 1.0):g}{capped}"
    if data.get("per_table"):
        text = json.dumps(data["per_table"], sort_keys=True)
        pooling = f"{pooling}_pt{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return f"{model['name']}_{skew}_{pooling}_seed{seed}"


def _datasets(cfg):
    """The synthetic datasets: {name: (model, data, seed)}."""
    out = {}
    for model in cfg["models"]:
        if "criteo" in model:
            continue
        for scenario in cfg["scenarios"]:
            for seed in cfg["seeds"]:
                out[dataset_name(model, scenario["data"], seed)] = (
                    model,
                    scenario["data"],
                    seed,
                )
    return out


DATASETS = _datasets(config)


# -- real Criteo data ----------------------------------------------------------------------


def _is_url(source):
    return "://" in source


def criteo_source_key(criteo):
    """Name of a source's record: its file name and the start of its checksum."""
    name = Path(criteo["source"].split("?")[0]).name or "source"
    safe = "".join(c if c.isalnum() or c in "._+-" else "_" for c in name)
    return f"{safe}-{criteo['sha256'].lower()[:12]}"


def _criteo_sources(cfg):
    out = {}
    for model in cfg["models"]:
        if "criteo" in model:
            out.setdefault(criteo_source_key(model["criteo"]), (model["criteo"], model))
    return out


#: Criteo models by name (their dataset folder is data/criteo/<model name>).
CRITEO_MODELS = {m["name"]: m for m in config["models"] if "criteo" in m}
#: Criteo sources by record name: (the `criteo` block, the first model that reads it).
CRITEO_SOURCES = _criteo_sources(config)


def model_dataset(model, data, seed):
    """The dataset folder a run of this model, scenario data and seed reads."""
    if "criteo" in model:
        return f"{CRITEO_DIR}/{model['name']}"
    return f"{DATA_DIR}/{dataset_name(model, data, seed)}"


def _warn_absent_sources():
    """At parse time: a local source that is not there (the data job will stop on it)."""
    for key, (criteo, model) in CRITEO_SOURCES.items():
        made = [
            Path(f"{CRITEO_DIR}/{m['name']}/manifest.json").is_file()
            for m in CRITEO_MODELS.values()
            if criteo_source_key(m["criteo"]) == key
        ]
        if _is_url(criteo["source"]) or all(made) or Path(criteo["source"]).is_file():
            continue
        logger.warning(
            f"Criteo source {criteo['source']!r} (model {model['name']!r}, key "
            "criteo.source) is not there: its data job will stop before any run that "
            "reads it, saying where to get the file."
        )


if workflow.is_main_process:
    _warn_absent_sources()


def run_dir(wildcards):
    """The run folder of a job (the directory its rank logs go to)."""
    return f"{RUNS_DIR}/{RUN_PATTERN.format(**_axes(wildcards))}"


def run_dataset(wildcards):
    axes = _axes(wildcards)
    scenario, model = SCENARIOS[axes["scenario"]], MODELS[axes["model"]]
    return model_dataset(model, scenario["data"], axes["seed"])


def run_dataset_manifest(wildcards):
    """Input function: the manifest of the dataset this run reads."""
    return f"{run_dataset(wildcards)}/manifest.json"


def run_config(wildcards):
    """The resolved `bls-dlrm infer` config of one launch (keys of bls_dlrm.run.config.RunConfig)."""
    axes = _axes(wildcards)
    scenario, model = SCENARIOS[axes["scenario"]], MODELS[axes["model"]]
    delay = resolved_delay(scenario, model, axes["seed"])
    size = float(delay.get("size_s", 0.0))
    data = scenario["data"]
    if "criteo" in model:  # real indices, one lookup per table
        data = {"index_dist": "criteo", "pooling": "fixed", "pooling_k": 1}
    run = config["run"]
    tags = {
        "scenario": scenario["name"],
        "model": model["name"],
        "dataset": Path(run_dataset(wildcards)).name,
        "delay_kind": delay["kind"],
        "delay_s": size,
        "delay_factor": (
            round(size / model["work_s"], 6) if model["work_s"] > 0 else None
        ),
        "index_dist": data["index_dist"],
        "zipf_alpha": data["zipf_alpha"] if data["index_dist"] == "zipf" else None,
        "pooling": data["pooling"],
        "pooling_k": data["pooling_k"],
        "seed": axes["seed"],
        "rep": axes["rep"],
        "binding": scenario_binding(scenario, config),
    }
    return {
        "dataset": run_dataset(wildcards),
        "model": {
            "name": model["model"],
            "max_rows": model["max_rows"],
            "seed": model["model_seed"],
        },
        "plan": scenario["plan"],
        "series": [s.spec for s in SERIES],
        "shuffle_seed": config["shuffle_seed"],
        "binding": scenario_binding(scenario, config),
        "transport": run["transport"],
        "timeout_s": run["timeout_s"],
        "delay": delay,
        "warmup": run["warmup"],
        "iterations": run["iterations"],
        "threads": run["threads"],
        "verify_data": run["verify_data"],
        "repetition": axes["rep"],
        "run_id": RUN_PATTERN.format(**axes),
        "tags": tags,
    }


def run_config_yaml(wildcards):
    """Params function: the run config as YAML text (a change reruns the run)."""
    return yaml.dump(run_config(wildcards), Dumper=YAML_DUMPER, sort_keys=False).rstrip(
        "\n"
    )


def write_text(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def run_threads(wildcards):
    """Threads per rank (torch intra-op and OMP_NUM_THREADS)."""
    return config["run"]["threads"]


# -- dataset jobs ------------------------------------------------------------------------


def dataset_dir(wildcards):
    return f"{DATA_DIR}/{wildcards.dataset}"


def dataset_args(wildcards):
    """Params function: the `bls-dlrm make-data` arguments of one dataset."""
    if wildcards.dataset not in DATASETS:
        raise WorkflowError(
            f"{wildcards.dataset}: no dataset of that name in the config"
        )
    model, data, seed = DATASETS[wildcards.dataset]
    args = [
        f"--model {model['model']}",
        f"--model-seed {model['model_seed']}",
        f"--batches {model['batches']}",
        f"--batch-size {model['batch_size']}",
        f"--seed {seed}",
        f"--index-dist {data['index_dist']}",
        f"--zipf-alpha {data['zipf_alpha']}",
        f"--pooling {data['pooling']}",
        f"--pooling-k {data['pooling_k']}",
        f"--pooling-sigma {data['pooling_sigma']}",
    ]
    if data.get("zipf_alpha_range"):
        lo, hi = data["zipf_alpha_range"]
        args.append(f"--zipf-alpha-range {lo} {hi}")
    if data.get("pooling_max"):
        args.append(f"--pooling-max {data['pooling_max']}")
    if data.get("per_table"):
        text = json.dumps(
            {str(t): v for t, v in data["per_table"].items()}, sort_keys=True
        )
        args.append(f"--per-table {shlex.quote(text)}")
    if model["max_rows"] is not None:
        args.append(f"--max-rows {model['max_rows']}")
    return " ".join(args)


def _criteo_source_args(criteo, key, kind):
    """`bls-dlrm criteo` arguments that name, fetch and verify one source."""
    args = [
        shlex.quote(criteo["source"]),
        f"--sha256 {criteo['sha256'].lower()}",
        f"--record {shlex.quote(CRITEO_RECORD.format(source=key))}",
        f"--kind {kind}",
    ]
    if criteo.get("member"):
        args.append(f"--member {shlex.quote(criteo['member'])}")
    if _is_url(criteo["source"]) or criteo.get("member"):
        name = criteo.get("member") or criteo_source_key(criteo).rsplit("-", 1)[0]
        args.append(f"--fetch-to {shlex.quote(f'{CRITEO_DIR}/sources/{key}/{name}')}")
    return args


def criteo_source_args(wildcards):
    """Params function: `bls-dlrm criteo --verify-only` arguments of one source record."""
    if wildcards.source not in CRITEO_SOURCES:
        raise WorkflowError(
            f"{wildcards.source}: no Criteo source of that name in the config"
        )
    criteo, model = CRITEO_SOURCES[wildcards.source]
    return " ".join(_criteo_source_args(criteo, wildcards.source, model["model"]))


def criteo_record(wildcards):
    """Input function: the verification record of the source a Criteo dataset reads."""
    if wildcards.dataset not in CRITEO_MODELS:
        raise WorkflowError(
            f"{wildcards.dataset}: no Criteo model of that name in the config"
        )
    return CRITEO_RECORD.format(
        source=criteo_source_key(CRITEO_MODELS[wildcards.dataset]["criteo"])
    )


def criteo_dataset_args(wildcards):
    """Params function: the `bls-dlrm criteo` arguments of one model's dataset.

    Row caps: `max_rows` bounds every table (the hashing range), and the dataset holds the
    first `batches` x `batch_size` samples of the file (--limit).
    """
    model = CRITEO_MODELS[wildcards.dataset]
    key = criteo_source_key(model["criteo"])
    args = _criteo_source_args(model["criteo"], key, model["model"])
    args += [
        f"--batch-size {model['batch_size']}",
        f"--limit {model['batches'] * model['batch_size']}",
    ]
    if model["max_rows"] is not None:
        args.append(f"--max-rows {model['max_rows']}")
    return " ".join(args)


def criteo_dataset_dir(wildcards):
    return f"{CRITEO_DIR}/{wildcards.dataset}"


# -- estimates: seconds per run, cluster runtime, core-hours ------------------------------


@cache
def _sync_delay_s(scenario_name, model_name, ranks, seed):
    """Total delay a synchronous run waits for: the sum over iterations of the max over ranks."""
    from bls_dlrm.delays import DelaySpec

    scenario, model = SCENARIOS[scenario_name], MODELS[model_name]
    total = config["run"]["warmup"] + config["run"]["iterations"]
    spec = DelaySpec.from_dict(resolved_delay(scenario, model, seed))
    return float(spec.schedule(ranks, total).max(axis=0).sum())


def estimated_seconds(axes):
    """Upper estimate of one launch's wall time: launch cost plus, per series, the
    synchronous makespan (work plus the delays a synchronous exchange waits for)."""
    model = MODELS[axes["model"]]
    total = config["run"]["warmup"] + config["run"]["iterations"]
    delay = _sync_delay_s(axes["scenario"], axes["model"], axes["ranks"], axes["seed"])
    per_series = total * model["work_s"] + delay
    return config["estimate"]["startup_s"] + len(SERIES) * per_series


def run_runtime(wildcards):
    """Resource function: minutes to request from a batch scheduler for one launch."""
    seconds = estimated_seconds(_axes(wildcards)) * config["estimate"]["safety"]
    return max(2, math.ceil(seconds / 60))


def run_bind_flag(wildcards):
    """Params function: the launcher's placement flag (`-bind-to core`, or nothing)."""
    binding = scenario_binding(SCENARIOS[wildcards.scenario], config)
    return "-bind-to core" if binding == "core" else ""


def design_table():
    """The sweep design, one row per run (launch x series): results/tables/design.csv."""
    rows = []
    for row, launch in zip(PARAMSPACE.dataframe.to_dict("records"), LAUNCH_DIRS):
        scenario, model = SCENARIOS[row["scenario"]], MODELS[row["model"]]
        delay = resolved_delay(scenario, model, row["seed"])
        for series in SERIES:
            rows.append(
                {
                    **row,
                    "collective": series.collective,
                    "lag_bound": series.lag_bound,
                    "series": series.folder,
                    "run_dir": f"{launch}/{series.folder}",
                    "binding": scenario_binding(scenario, config),
                    "model_config": model["model"],
                    "max_rows": model["max_rows"],
                    "batch_size": model["batch_size"],
                    "dataset": Path(
                        model_dataset(model, scenario["data"], row["seed"])
                    ).name,
                    "plan": scenario["plan"],
                    "index_dist": (
                        "criteo"
                        if "criteo" in model
                        else scenario["data"]["index_dist"]
                    ),
                    "pooling": scenario["data"]["pooling"],
                    "delay_kind": delay["kind"],
                    "delay_s": delay.get("size_s", 0.0),
                    "estimated_launch_s": round(estimated_seconds(row), 1),
                    "description": scenario["description"],
                }
            )
    return pd.DataFrame(rows)


DESIGN = design_table()
DESIGN_DIGEST = hashlib.sha256(DESIGN.to_csv(index=False).encode()).hexdigest()[:16]
_LAUNCHES = DESIGN.drop_duplicates(subset=list(AXES))
EST_SECONDS = float(_LAUNCHES["estimated_launch_s"].sum())
EST_CORE_HOURS = float(
    (_LAUNCHES["estimated_launch_s"] * _LAUNCHES["ranks"]).sum() / 3600
)
_REPETITIONS = "/".join(
    map(str, sorted({scenario_repetitions(sc, config) for sc in SCENARIOS.values()}))
)
SWEEP_SUMMARY = (
    f"{len(DESIGN)} runs in {len(_LAUNCHES)} launches ({len(SCENARIOS)} scenarios, "
    f"ranks {'/'.join(map(str, RANK_COUNTS))}, {len(MODELS)} models, "
    f"{len(config['seeds'])} seeds, {_REPETITIONS} repetitions), "
    f"each launch running {len(SERIES)} series "
    f"({', '.join(SERIES_LABELS)}) in a shuffled order, on {len(DATASETS) + len(CRITEO_MODELS)} datasets; "
    f"estimated {EST_SECONDS / 3600:.2f} h one launch at a time, {EST_CORE_HOURS:.2f} "
    "core-hours (ranks x seconds per launch)"
)


def tables_dir(wildcards, output):
    """Params function: the folder `bls-dlrm tables` writes into (that of its outputs)."""
    return str(Path(output.runs).parent)


def write_design(path):
    write_text(path, DESIGN.to_csv(index=False))


if workflow.is_main_process:
    logger.info(f"Sweep: {SWEEP_SUMMARY}")


# -- the serving sweep (config section `serving`; rules in serving.smk) ---------------

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


def serving_tables_dir(wildcards, output):
    """Params function: the folder `bls-dlrm serve-tables` writes into."""
    return str(Path(output.serving).parent)

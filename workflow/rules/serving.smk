# Serving sweep (config section `serving`; absent: no serving runs): query latency under an
# offered load, `bls-dlrm serve` in open loop (src/bls_dlrm/run/serve.py).
#
# One launch per serving workload and repetition, results/serving/scenario~S/rep~R/:
# calibration of the synchronous candidates (the highest closed-loop capacity is the
# launch's synchronous series, chosen before any load runs), then every offered load (a
# fraction of that capacity) for the synchronous series and BLS at the configured lag
# bounds, shuffled per load, then the capacity search at the SLO per series. The launch
# reads the workload's dataset, delays and placement from the same scenario as the closed
# loop. Its report, serve.json, is the output; `serving_tables` turns the reports into
# results/tables/serving.parquet and capacity.parquet for fig6_serving and the claims.

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
            " && OMP_NUM_THREADS={params.omp_threads} {params.bls_dlrm:q} mpiexec {params.bind}"
            " -n {params.ranks}"
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
            out=serving_tables_dir,
            reports=len(serving_reports()),
        message:
            "Serving tables of {params.reports} reports -> {params.out}"
        shell:
            "{params.bls_dlrm:q} serve-tables {input:q} --out {params.out:q} > {log:q} 2>&1"

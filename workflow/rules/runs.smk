# Inference runs: one job per row of the sweep design (common.smk, PARAMSPACE).
#
# A run job writes its resolved config to run.yaml in the run folder (params function
# run_config_yaml: any change of the scenario, model or run settings changes the params and
# so reruns the run), then `mpiexec -n P bls-dlrm infer --config run.yaml` writes one log
# per rank. The logs are the outputs: each is renamed into place only when its rank
# finishes, so a failed or interrupted run leaves none of them (only rank*.jsonl.partial)
# and the next snakemake call redoes exactly the unfinished runs.
#
# Outputs must follow from the wildcards, and a run of P ranks has P logs, so there is one
# run rule per rank count of the config: run_4ranks, run_8ranks, ...


for _ranks in RANK_COUNTS:

    rule:
        name:
            f"run_{_ranks}ranks"
        input:
            dataset=run_dataset_manifest,
        output:
            rank_logs(_ranks),
        log:
            RUN_LOG,
        benchmark:
            RUN_BENCHMARK
        wildcard_constraints:
            ranks=str(_ranks),
        conda:
            CONDA_ENV
        threads: _ranks
        resources:
            mpi_ranks=_ranks,
            tasks=_ranks,
            mpi=MPIEXEC,
            runtime=run_runtime,
        params:
            mpiexec=MPIEXEC,
            bls_dlrm=BLS_DLRM,
            run_dir=run_dir,
            config=run_config_yaml,
            omp_threads=run_threads,
        message:
            "Run {wildcards.scenario} / {wildcards.collective} L={wildcards.lag_bound} / P={wildcards.ranks} / {wildcards.model} / seed {wildcards.seed} / rep {wildcards.rep}"
        shell:
            "mkdir -p {params.run_dir:q}"
            " && printf '%s\\n' {params.config:q} > {params.run_dir:q}/run.yaml"
            " && OMP_NUM_THREADS={params.omp_threads} {params.mpiexec:q} -n {wildcards.ranks}"
            " {params.bls_dlrm:q} infer --config {params.run_dir:q}/run.yaml"
            " --out {params.run_dir:q} --no-progress > {log:q} 2>&1"

# Inference launches: one job per row of the sweep design (design.smk, PARAMSPACE), that is
# per workload and repetition; each launch runs every series (gloo, mpi, bls at each lag
# bound) in a shuffled order, so a workload's series share one allocation and repetitions
# interleave.
#
# A job writes its resolved config to run.yaml in the launch folder (params function
# run_config_yaml: any change of the scenario, model or run settings changes the params and
# so reruns the launch), then `bls-dlrm mpiexec [-bind-to core] -n P bls-dlrm infer
# --config run.yaml` writes one log per rank and series (`bls-dlrm mpiexec` is the venv's
# mpiexec; in a Slurm job it first restores the allocation's node layout, see common.smk).
# The logs are the outputs: each is renamed into place only when its series finishes on its
# rank, so an interrupted launch leaves rank*.jsonl.partial files and the next snakemake
# call redoes exactly the unfinished launches.
#
# Outputs must follow from the wildcards, and a launch of P ranks has P logs per series, so
# there is one run rule per rank count of the config: run_2ranks, run_4ranks, ...


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
            bls_dlrm=BLS_DLRM,
            run_dir=run_dir,
            config=run_config_yaml,
            omp_threads=run_threads,
            bind=run_bind_flag,
        message:
            "Launch {wildcards.scenario} / P={wildcards.ranks} / {wildcards.model} / seed {wildcards.seed} / rep {wildcards.rep}: every series, shuffled"
        shell:
            "mkdir -p {params.run_dir:q}"
            " && printf '%s\\n' {params.config:q} > {params.run_dir:q}/run.yaml"
            " && OMP_NUM_THREADS={params.omp_threads} {params.bls_dlrm:q} mpiexec {params.bind}"
            " -n {wildcards.ranks}"
            " {params.bls_dlrm:q} infer --config {params.run_dir:q}/run.yaml"
            " --out {params.run_dir:q} --no-progress > {log:q} 2>&1"

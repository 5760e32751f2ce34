# TorchRec (optional extra: `make torchrec`): the sweep's balanced, rotating-2.5x and
# skew-pooling workloads through TorchRec's sharded DLRM on the sweep's first model, the
# same datasets and delay schedules as the main runs. One launch per workload (2 ranks
# bound one per core) runs TorchRec's own forward over gloo and mpisync and the pipelined
# loop over bls (L = 0, 4, 8), interleaved over 5 repetitions. Not part of `all`:
#   snakemake --cores 2 torchrec
# The figure (fig8_torchrec) is drawn from the report by its own cheap rule.
include: "torchrec_common.smk"


localrules:
    torchrec,


rule torchrec:
    input:
        TORCHREC_SUMMARY,
        f"{FIG_DIR}/fig8_torchrec.pdf",


rule bench_torchrec:
    input:
        torchrec_manifests,
    output:
        summary=TORCHREC_SUMMARY,
        runs=TORCHREC_RUNS,
        table=f"{TORCHREC_DIR}/torchrec.md",
    log:
        f"{LOG_DIR}/torchrec/bench.log",
    benchmark:
        f"{BENCH_DIR}/torchrec/bench.tsv"
    conda:
        CONDA_ENV
    threads: TORCHREC_RANKS
    params:
        bls_dlrm=BLS_DLRM,
        workloads=torchrec_workload_args,
        series=TORCHREC_SERIES,
        repetitions=TORCHREC_REPETITIONS,
        iterations=TORCHREC_ITERATIONS,
        ranks=TORCHREC_RANKS,
    message:
        "TorchRec: {params.series} on {TORCHREC_WORKLOADS}, {params.repetitions} repetitions"
    shell:
        "{params.bls_dlrm:q} bench-torchrec {params.workloads} --series {params.series}"
        " --repetitions {params.repetitions} --iterations {params.iterations}"
        ' --ranks {params.ranks} --bind core --out "$(dirname {output.summary:q})" > {log:q} 2>&1'


rule figure_torchrec:
    input:
        notebook=f"{FIG_EXECUTED_DIR}/fig8_torchrec.source.ipynb",
        summary=TORCHREC_SUMMARY,
        runs=TORCHREC_RUNS,
        helpers=FIG_HELPERS,
    output:
        pdf=f"{FIG_DIR}/fig8_torchrec.pdf",
        png=f"{FIG_DIR}/fig8_torchrec.png",
        csv=f"{FIG_DIR}/fig8_torchrec.csv",
        notebook=f"{FIG_EXECUTED_DIR}/fig8_torchrec.ipynb",
    log:
        f"{FIG_LOG_DIR}/fig8_torchrec.log",
    conda:
        CONDA_ENV
    params:
        python=NOTEBOOK_PYTHON,
        style=figure_style(),
    message:
        "Figure fig8_torchrec: papermill {input.notebook} -> {output.pdf}"
    shell:
        "{params.python:q} -m papermill {input.notebook:q} {output.notebook:q}"
        " -k python3 --no-progress-bar --log-output"
        ' -p torchrec_dir "$(dirname {input.summary:q})" -p out_dir "$(dirname {output.pdf:q})"'
        " -p style {params.style:q} > {log:q} 2>&1"

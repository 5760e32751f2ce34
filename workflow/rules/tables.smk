# Run logs -> tidy tables. Every run of the design is an input, by its rank logs, so the
# tables are rebuilt whenever a run is (re)done; runs of other configs that happen to lie
# under results/runs are not read.


rule design:
    output:
        DESIGN_CSV,
    log:
        f"{LOG_DIR}/design.log",
    params:
        digest=DESIGN_DIGEST,
    message:
        f"Sweep design: {SWEEP_SUMMARY}"
    run:
        write_design(output[0])
        write_text(log[0], f"{SWEEP_SUMMARY}\n")


rule tables:
    input:
        logs=ALL_RANK_LOGS,
        design=DESIGN_CSV,
    output:
        **TABLE_FILES,
    log:
        f"{LOG_DIR}/tables.log",
    benchmark:
        f"{BENCH_DIR}/tables.tsv"
    conda:
        CONDA_ENV
    params:
        bls_dlrm=BLS_DLRM,
        run_dirs=RUN_DIRS,
        runs=len(RUN_DIRS),
        out=tables_dir,
    message:
        "Tables of {params.runs} runs -> {params.out}"
    shell:
        "{params.bls_dlrm:q} tables {params.run_dirs:q} --out {params.out:q} --no-progress > {log:q} 2>&1"


# Target: every run and the tables, without figures (`snakemake --cores 2 sweep`). The run
# logs are requested here, not only through the tables: snakemake regenerates a missing
# file only when something requests it, and the tables being up to date would otherwise
# hide a run whose logs were deleted or never finished.
rule sweep:
    input:
        ALL_RANK_LOGS,
        DESIGN_CSV,
        TABLE_FILES.values(),
        serving_reports(),
        SERVING_TABLES.values() if SERVING else [],

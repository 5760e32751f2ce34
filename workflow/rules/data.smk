# Synthetic datasets: one folder per distinct (model shape, data skew, seed), made once and
# read by every run of that workload. The manifest (with the sha256 of every file) is the
# last file written, so its presence means the dataset is complete.


rule dataset:
    output:
        DATASET_MANIFEST,
    log:
        DATASET_LOG,
    benchmark:
        DATASET_BENCHMARK
    conda:
        CONDA_ENV
    params:
        bls_dlrm=BLS_DLRM,
        args=dataset_args,
        out=dataset_dir,
    message:
        "Synthetic dataset {wildcards.dataset}"
    shell:
        "{params.bls_dlrm:q} make-data {params.args} --out {params.out:q} --overwrite > {log:q} 2>&1"

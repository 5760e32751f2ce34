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


# Real Criteo data (models with a `criteo` block; config/criteo.yaml). Two steps:
#
# criteo_source: make the source file available and check its sha256, once. A local file is
# read where it is; a URL or a tar archive member is fetched below data/criteo/sources/.
# The record (data/criteo/sources/<file>-<sha256 prefix>.json) holds the file's path, size
# and modification time: later jobs trust it while those stay the same, so a file of tens of
# GB is hashed once. An absent file or an unreachable URL stops this job, before any run
# that reads the data, with a message that says where the published files are.
#
# criteo_dataset: preprocess the first batches x batch_size samples, tables capped at
# max_rows rows (hashing), into data/criteo/<model name>/ (manifest last).
#
# On failure the last lines of the log are printed too, so the reason is in the output.


rule criteo_source:
    output:
        CRITEO_RECORD,
    log:
        CRITEO_SOURCE_LOG,
    conda:
        CONDA_ENV
    params:
        bls_dlrm=BLS_DLRM,
        args=criteo_source_args,
    message:
        "Criteo source {wildcards.source}: fetch if needed, check its sha256 once"
    shell:
        "{params.bls_dlrm:q} criteo {params.args} --verify-only > {log:q} 2>&1"
        " || {{ tail -n 3 {log:q} >&2; exit 1; }}"


rule criteo_dataset:
    input:
        record=criteo_record,
    output:
        CRITEO_MANIFEST,
    log:
        CRITEO_LOG,
    benchmark:
        CRITEO_BENCHMARK
    conda:
        CONDA_ENV
    params:
        bls_dlrm=BLS_DLRM,
        args=criteo_dataset_args,
        out=criteo_dataset_dir,
    message:
        "Criteo dataset {wildcards.dataset}"
    shell:
        "{params.bls_dlrm:q} criteo {params.args} --out {params.out:q} --overwrite"
        " > {log:q} 2>&1 || {{ tail -n 3 {log:q} >&2; exit 1; }}"

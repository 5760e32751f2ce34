# Tables -> the claims table and the numbers the paper quotes; figures + numbers -> paper.
#
# `claims` writes results/claims.md (each claim of the abstract, the figure and command
# that test it, the measured number and a verdict, the machine) and paper/macros.tex (one
# \newcommand per number in the paper), both from
# src/bls_dlrm/analysis/report.py. They are part of
# the default target. The PDF is not: it needs a LaTeX installation (see paper/README.md)
# and is built only on request:
#
#   snakemake --cores 1 paper
#
# No config keys are read here.

import sys

CLAIMS_PYTHON = sys.executable  # the project's venv, where bls_dlrm is installed
CLAIMS_MD = "results/claims.md"
PAPER_DIR = "paper"
PAPER_TEX = f"{PAPER_DIR}/main.tex"
PAPER_MACROS = f"{PAPER_DIR}/macros.tex"
PAPER_PDF = f"{PAPER_DIR}/main.pdf"
PAPER_BUILD = "build"  # latexmk's output folder, relative to paper/
PAPER_TABLES_DIR = "results/tables"


rule claims:
    input:
        runs=f"{PAPER_TABLES_DIR}/runs.parquet",
        per_iteration=f"{PAPER_TABLES_DIR}/per_iteration.parquet",
        iterations=f"{PAPER_TABLES_DIR}/iterations.parquet",  # the simulation's check
        serving=list(SERVING_TABLES.values()) if SERVING else [],
        code=sorted(str(p) for p in Path("src/bls_dlrm/analysis").glob("*.py")),
        protocol="config/protocol.yaml",
        protocol_schema="workflow/schemas/protocol.schema.yaml",
    output:
        claims=CLAIMS_MD,
        macros=PAPER_MACROS,
    log:
        "results/logs/claims.log",
    conda:
        "../../environment.yml"
    params:
        python=CLAIMS_PYTHON,
    message:
        "Claims of the paper vs the measurements -> {output.claims}, {output.macros}"
    shell:
        '{params.python:q} -m bls_dlrm.analysis.report --tables "$(dirname {input.runs:q})"'
        " --protocol {input.protocol:q} --out {output.claims:q} --macros {output.macros:q}"
        " > {log:q} 2>&1"


rule paper:
    input:
        tex=PAPER_TEX,
        macros=PAPER_MACROS,
        figures=paper_figures(),
    output:
        PAPER_PDF,
    log:
        "results/logs/paper.log",
    container:
        # Documents the software (TeX Live with latexmk) for `--sdm apptainer`; by default
        # the latexmk on PATH is used.
        "docker://texlive/texlive:latest"
    params:
        build=PAPER_BUILD,
        built=f"{PAPER_DIR}/{PAPER_BUILD}/main.pdf",
    message:
        "Paper: latexmk -pdf {input.tex} -> {output}"
    shell:
        "if ! command -v latexmk > /dev/null; then"
        " echo 'latexmk not found: see paper/README.md for how to install it' >&2; exit 1; fi; "
        "latexmk -pdf -cd -interaction=nonstopmode -halt-on-error"
        " -outdir={params.build:q} {input.tex:q} > {log:q} 2>&1"
        " && cp {params.built:q} {output:q}"

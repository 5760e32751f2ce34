# Tables -> figures. One notebook per figure (notebooks/<figure>.py, jupytext py:percent),
# converted to .ipynb and executed by papermill with the tables folder, the output folder and
# the style as parameters. The executed notebooks are kept in results/notebooks/ beside the
# figures they drew, so a reader can see the numbers behind every plot, and every figure
# writes the points it draws beside it (figures/<figure>.csv: medians, ratios with their
# 95% intervals, ideal bounds), so they can be checked or re-plotted without the tables.
#
# Plotting is cheap and separate from the runs: changing a notebook or the palette
# (src/bls_dlrm/figures/) redraws the figures and never reruns an experiment.
#
# Config (optional; the rules work without it):
#   figures:
#     style: paper     # "paper" (3.3 in column, the default) or "notebook"

import sys
from pathlib import Path

# The Python that runs snakemake (the project's venv): it has jupytext, papermill and
# ipykernel, and papermill starts the `python3` kernel with this same interpreter, so no
# kernel has to be registered and .venv/bin need not be on PATH.
NOTEBOOK_PYTHON = sys.executable

FIG_TABLES_DIR = "results/tables"
FIG_DIR = "figures"
FIG_NOTEBOOK_DIR = "notebooks"
FIG_EXECUTED_DIR = "results/notebooks"
FIG_LOG_DIR = "results/logs/figures"
FIG_FORMATS = ("pdf", "png")
# What every figure depends on besides its notebook: the analysis code (workloads, the one
# comparison, intervals, the protocol's reader, the simulation), the figures' style and
# captions, and the protocol itself (thresholds, judged lag bound, interval settings).
FIG_HELPERS = (
    *sorted(str(p) for p in Path("src/bls_dlrm/analysis").glob("*.py")),
    *sorted(str(p) for p in Path("src/bls_dlrm/figures").glob("*.py")),
    "src/bls_dlrm/series.py",
    "src/bls_dlrm/paths.py",
    "config/protocol.yaml",
)

FIGURES = {
    "fig1_throughput_vs_delay": ("runs",),
    "fig2_latency": ("runs", "per_iteration"),
    "fig3_speedup_vs_lag": ("runs",),
    "fig4_scenarios": ("runs",),
    "fig5_breakdown": ("runs", "iterations"),
    "fig7_simulation": ("runs", "iterations"),
}
if config.get("serving"):
    FIGURES["fig6_serving"] = ("serving", "capacity")
FIG_ALL_TABLES = ("runs", "per_iteration", "iterations")


rule notebook_source:
    input:
        f"{FIG_NOTEBOOK_DIR}/{{notebook}}.py",
    output:
        temp(f"{FIG_EXECUTED_DIR}/{{notebook}}.source.ipynb"),
    log:
        f"{FIG_LOG_DIR}/{{notebook}}.jupytext.log",
    wildcard_constraints:
        notebook=r"[A-Za-z0-9_]+",
    conda:
        "../../environment.yml"
    params:
        python=NOTEBOOK_PYTHON,
    message:
        "Notebook {wildcards.notebook}: jupytext py:percent -> ipynb"
    shell:
        "{params.python:q} -m jupytext --to ipynb --output {output:q} {input:q} > {log:q} 2>&1"


rule figure:
    input:
        notebook=f"{FIG_EXECUTED_DIR}/{{figure}}.source.ipynb",
        runs=f"{FIG_TABLES_DIR}/runs.parquet",
        tables=figure_tables,
        helpers=FIG_HELPERS,
    output:
        pdf=f"{FIG_DIR}/{{figure}}.pdf",
        png=f"{FIG_DIR}/{{figure}}.png",
        csv=f"{FIG_DIR}/{{figure}}.csv",
        notebook=f"{FIG_EXECUTED_DIR}/{{figure}}.ipynb",
    log:
        f"{FIG_LOG_DIR}/{{figure}}.log",
    wildcard_constraints:
        figure="|".join(FIGURES),
    conda:
        "../../environment.yml"
    params:
        python=NOTEBOOK_PYTHON,
        style=figure_style(),
    message:
        "Figure {wildcards.figure}: papermill {input.notebook} -> {output.pdf}, {output.png}, {output.csv}"
    shell:
        "{params.python:q} -m papermill {input.notebook:q} {output.notebook:q}"
        " -k python3 --no-progress-bar --log-output"
        ' -p tables_dir "$(dirname {input.runs:q})" -p out_dir "$(dirname {output.pdf:q})"'
        " -p style {params.style:q} > {log:q} 2>&1"


# Interactive summaries of a whole sweep; not part of `all`:
#   snakemake --cores 1 results/notebooks/overview.ipynb
rule overview_notebook:
    input:
        notebook=f"{FIG_EXECUTED_DIR}/overview.source.ipynb",
        runs=f"{FIG_TABLES_DIR}/runs.parquet",
        tables=[f"{FIG_TABLES_DIR}/{table}.parquet" for table in FIG_ALL_TABLES],
        helpers=FIG_HELPERS,
    output:
        f"{FIG_EXECUTED_DIR}/overview.ipynb",
    log:
        f"{FIG_LOG_DIR}/overview.log",
    conda:
        "../../environment.yml"
    params:
        python=NOTEBOOK_PYTHON,
    message:
        "Overview notebook of the sweep -> {output}"
    shell:
        "{params.python:q} -m papermill {input.notebook:q} {output:q}"
        " -k python3 --no-progress-bar --log-output"
        ' -p tables_dir "$(dirname {input.runs:q})" > {log:q} 2>&1'

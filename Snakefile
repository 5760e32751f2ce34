# bls-dlrm: the workflow of the artifact.
#
#   config -> data -> runs (logs) + serving runs -> tables -> figures/numbers -> paper
#
# `snakemake --cores N` runs the default config (config/config.yaml); pick another with
# `--configfile config/smoke.yaml` or `config/paper.yaml`. Machine settings live in
# profiles/ (`--workflow-profile profiles/local`, `--profile profiles/slurm`). The target
# `sweep` stops at the tables (no figures).
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/design.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/runs.smk"
include: "workflow/rules/serving.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/paper.smk"
include: "workflow/rules/torchrec.smk"


localrules:
    all,
    sweep,
    design,


# Every run log is requested by name (see rule sweep): a run that was interrupted or whose
# logs were deleted is redone even when the tables and figures exist.
rule all:
    default_target: True
    input:
        ALL_RANK_LOGS,
        DESIGN_CSV,
        TABLE_FILES.values(),
        serving_reports(),
        figure_targets(),
        paper_targets(),

# transfergrid: the grid of image-classification transfer-learning experiments.
# Stages live in workflow/rules/, one file each; the logic lives in the transfergrid package.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/cache.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/frozen.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        "results/summary.csv",
        "results/report/index.html",

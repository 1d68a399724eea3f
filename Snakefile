# transfergrid: the grid of image-classification transfer-learning experiments.
# Stages live in workflow/rules/, one file each; the logic lives in the transfergrid package.
import sys

from snakemake.utils import min_version

min_version("9.0")

# Snakemake reads `configfile:` itself and reports a file that is not UTF-8 or not YAML in a
# traceback: check it first, for a one-line error.
sys.path.insert(0, f"{workflow.basedir}/workflow")  # the transfergrid package
from transfergrid.config import check_config_file, one_line_config_errors

with one_line_config_errors():
    check_config_file("config.yaml")


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
include: "workflow/rules/similarity.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/report.smk"


start_group_fork_server()  # only in a cluster job group's own Snakemake process (common.smk)


rule all:
    default_target: True
    input:
        "results/summary.csv",
        "results/report/index.html",

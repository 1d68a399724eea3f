# Frozen cells on cached features: one job fits every head, seed, fraction and learning-rate
# candidate of one feature cache (each into its own candidate directory), one job evaluates them on
# the cached test features. Two rules each: a pretrained cache is shared by every seed, a random
# base is drawn from the cell seed.
#
# The rules come once per dataset (fit_frozen_pretrained_<dataset>, ...), the dataset spelled out in
# their output paths. Snakemake finds the producer of a file by the constant start of each output
# pattern: with {dataset} as a wildcard, the hundreds of patterns of these rules (every fraction,
# head, seed and file) all start with results/cells/ and were scanned for every cell file of the
# grid; spelled out, only those of the file's own dataset and fraction are. No ruleorder is needed:
# the network rules' strategy wildcard refuses these cells (NETWORK_STRATEGY in common.smk) and a
# pretrained base's weights wildcard refuses `none`.
#
# On a cluster the feature extraction and the frozen jobs of one feature cache run as one group job
# (group "frozen", see profiles/slurm/config.yaml); Snakemake ignores groups in a local run.

# The code versions of fitting heads on cached features and of evaluating them (common.smk).
FROZEN_FIT_CODE = code_version("frozen.py", "cell.py", "logreg.py", *TRAINING_CODE)
FROZEN_EVALUATION_CODE = code_version("evaluate.py", "metrics.py")

if FEATURE_HEADS:
    for frozen_dataset in config["grid"]["datasets"]:

        rule:
            name:
                f"fit_frozen_pretrained_{frozen_dataset}"
            input:
                unpack(functools.partial(frozen_inputs, dataset=frozen_dataset)),
            output:
                frozen_outputs(frozen_dataset, random_base=False, per_candidate=True),
            log:
                f"{LOGS}/fit_frozen/{frozen_dataset}_{{backbone}}_{{weights}}.log",
            wildcard_constraints:
                weights=r"(?!none/)[A-Za-z0-9_.-]+",  # not a random base: the lookahead sees the path
            # Every seed's heads, where a random base's job fits one seed's: the longer job first.
            priority: 1
            group:
                "frozen"
            conda:
                "../../envs/torch.yaml"
            threads: COMPUTE_THREADS
            resources:
                **COMPUTE_RESOURCES,
            params:
                candidates=functools.partial(frozen_candidates, dataset=frozen_dataset),
                code=FROZEN_FIT_CODE,
            script:
                "../scripts/fit_frozen.py"

        rule:
            name:
                f"fit_frozen_random_{frozen_dataset}"
            input:
                unpack(functools.partial(frozen_inputs, dataset=frozen_dataset)),
            output:
                frozen_outputs(frozen_dataset, random_base=True, per_candidate=True),
            log:
                f"{LOGS}/fit_frozen/{frozen_dataset}_{{backbone}}_none_seed{{seed}}.log",
            group:
                "frozen"
            conda:
                "../../envs/torch.yaml"
            threads: COMPUTE_THREADS
            resources:
                **COMPUTE_RESOURCES,
            params:
                candidates=functools.partial(frozen_candidates, dataset=frozen_dataset),
                code=FROZEN_FIT_CODE,
            script:
                "../scripts/fit_frozen.py"

        rule:
            name:
                f"evaluate_frozen_pretrained_{frozen_dataset}"
            input:
                unpack(functools.partial(frozen_evaluation_inputs, dataset=frozen_dataset)),
            output:
                frozen_outputs(frozen_dataset, random_base=False, per_candidate=False),
            log:
                f"{LOGS}/evaluate_frozen/{frozen_dataset}_{{backbone}}_{{weights}}.log",
            wildcard_constraints:
                weights=r"(?!none/)[A-Za-z0-9_.-]+",  # not a random base: the lookahead sees the path
            group:
                "frozen"
            conda:
                "../../envs/torch.yaml"
            threads: COMPUTE_THREADS
            resources:
                **COMPUTE_RESOURCES,
            params:
                cells=functools.partial(frozen_cell_candidates, dataset=frozen_dataset),
                code=FROZEN_EVALUATION_CODE,
            script:
                "../scripts/evaluate_frozen.py"

        rule:
            name:
                f"evaluate_frozen_random_{frozen_dataset}"
            input:
                unpack(functools.partial(frozen_evaluation_inputs, dataset=frozen_dataset)),
            output:
                frozen_outputs(frozen_dataset, random_base=True, per_candidate=False),
            log:
                f"{LOGS}/evaluate_frozen/{frozen_dataset}_{{backbone}}_none_seed{{seed}}.log",
            group:
                "frozen"
            conda:
                "../../envs/torch.yaml"
            threads: COMPUTE_THREADS
            resources:
                **COMPUTE_RESOURCES,
            params:
                cells=functools.partial(frozen_cell_candidates, dataset=frozen_dataset),
                code=FROZEN_EVALUATION_CODE,
            script:
                "../scripts/evaluate_frozen.py"

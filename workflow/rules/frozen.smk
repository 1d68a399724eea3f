# Frozen cells on cached features: one job fits every head, seed, fraction and learning-rate
# candidate of one feature cache (each into its own candidate directory), one job evaluates them on
# the cached test features. Two rules each: a pretrained cache is shared by every seed, a random
# base is drawn from the cell seed.

if FEATURE_HEADS:

    ruleorder: fit_frozen_random > fit_frozen_pretrained > train_candidate
    ruleorder: evaluate_frozen_random > evaluate_frozen_pretrained > evaluate_cell

    rule fit_frozen_pretrained:
        input:
            unpack(frozen_inputs),
        output:
            frozen_outputs(random_base=False, per_candidate=True),
        log:
            f"{LOGS}/fit_frozen/{{dataset}}_{{backbone}}_{{weights}}.log",
        wildcard_constraints:
            weights=r"(?!none$)[A-Za-z0-9_.-]+",
        conda:
            "../../envs/torch.yaml"
        threads: COMPUTE_THREADS
        resources:
            **COMPUTE_RESOURCES,
        params:
            candidates=frozen_candidates,
        script:
            "../scripts/fit_frozen.py"

    rule fit_frozen_random:
        input:
            unpack(frozen_inputs),
        output:
            frozen_outputs(random_base=True, per_candidate=True),
        log:
            f"{LOGS}/fit_frozen/{{dataset}}_{{backbone}}_none_seed{{seed}}.log",
        conda:
            "../../envs/torch.yaml"
        threads: COMPUTE_THREADS
        resources:
            **COMPUTE_RESOURCES,
        params:
            candidates=frozen_candidates,
        script:
            "../scripts/fit_frozen.py"

    rule evaluate_frozen_pretrained:
        input:
            unpack(frozen_evaluation_inputs),
        output:
            frozen_outputs(random_base=False, per_candidate=False),
        log:
            f"{LOGS}/evaluate_frozen/{{dataset}}_{{backbone}}_{{weights}}.log",
        wildcard_constraints:
            weights=r"(?!none$)[A-Za-z0-9_.-]+",
        conda:
            "../../envs/torch.yaml"
        threads: COMPUTE_THREADS
        resources:
            **COMPUTE_RESOURCES,
        params:
            cells=frozen_cell_candidates,
        script:
            "../scripts/evaluate_frozen.py"

    rule evaluate_frozen_random:
        input:
            unpack(frozen_evaluation_inputs),
        output:
            frozen_outputs(random_base=True, per_candidate=False),
        log:
            f"{LOGS}/evaluate_frozen/{{dataset}}_{{backbone}}_none_seed{{seed}}.log",
        conda:
            "../../envs/torch.yaml"
        threads: COMPUTE_THREADS
        resources:
            **COMPUTE_RESOURCES,
        params:
            cells=frozen_cell_candidates,
        script:
            "../scripts/evaluate_frozen.py"

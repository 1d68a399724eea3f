# Train one learning-rate candidate of a cell through the network (fine-tuning, scratch, frozen
# cells with augmentation); the best epoch is chosen on the validation split. Frozen cells that
# train on cached features are fitted by frozen.smk instead.


rule train_candidate:
    input:
        unpack(candidate_inputs),
    output:
        model=f"{CANDIDATE_PATTERN}/model.pt",
        history=f"{CANDIDATE_PATTERN}/history.csv",
        summary=f"{CANDIDATE_PATTERN}/train.json",
        cell=f"{CANDIDATE_PATTERN}/cell.json",
    log:
        f"{LOGS}/train_candidate/{{dataset}}/{{fraction}}/{{backbone}}/{{weights}}/{{strategy}}/{{head}}/seed{{seed}}/lr{{lr}}.log",
    wildcard_constraints:
        strategy=NETWORK_STRATEGY,
    conda:
        "../../envs/torch.yaml"
    threads: COMPUTE_THREADS
    resources:
        **COMPUTE_RESOURCES,
    params:
        cell=candidate_params,
        code=code_version("cell.py", *TRAINING_CODE),
    script:
        "../scripts/train_candidate.py"

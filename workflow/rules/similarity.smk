# How similar each target dataset is to the source of each pretrained weight source in the grid,
# measured once from the frozen features (the feature cache): one axis of the size x similarity map.


rule similarity:
    input:
        features=similarity_features,
        split="results/datasets/{dataset}/split.csv",
    output:
        similarity="results/similarity/{dataset}/{backbone}/{weights}.json",
    log:
        f"{LOGS}/similarity/{{dataset}}_{{backbone}}_{{weights}}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    params:
        code=code_version("similarity.py", "features.py"),
    script:
        "../scripts/similarity.py"

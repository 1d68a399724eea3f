# How similar each target dataset is to the source of each pretrained weight source in the grid,
# measured once from the frozen features (the feature cache): one axis of the size x similarity map.


rule similarity:
    input:
        features=similarity_features,
        split="results/datasets/{dataset}/split.csv",
        code=package_source("similarity.py"),
    output:
        similarity="results/similarity/{dataset}/{backbone}/{weights}.json",
    log:
        f"{LOGS}/similarity/{{dataset}}_{{backbone}}_{{weights}}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    script:
        "../scripts/similarity.py"

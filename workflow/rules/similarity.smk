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
    # The report waits for every similarity job, and a similarity job (100 bootstrap resamples of a
    # feature cache: 5-6 s on 1,000 images of 1,280 features) is one of the longest jobs of a frozen
    # grid: it goes first, so that it does not run last with the other cores idle.
    priority: 10
    conda:
        "../../envs/torch.yaml"
    threads: 1
    params:
        code=code_version("similarity.py", "features.py"),
    script:
        "../scripts/similarity.py"

# Decode and resize each dataset once per input resolution into a uint8 tensor file.


rule cache_images:
    input:
        manifest="results/datasets/{dataset}/manifest.csv",
        classes="results/datasets/{dataset}/classes.json",
    output:
        cache="results/cache/{dataset}/{size}px.npy",
        labels="results/cache/{dataset}/{size}px.labels.npy",
    log:
        f"{LOGS}/cache_images/{{dataset}}_{{size}}px.log",
    # On a cluster, one job with obtaining and splitting the dataset (see profiles/slurm).
    group:
        "prep"
    conda:
        "../../envs/torch.yaml"
    threads: config["resources"]["cache_threads"]
    resources:
        mem_mb=config["resources"]["train_mem_mb"],
    params:
        code=code_version("imagecache.py"),
    script:
        "../scripts/cache_images.py"

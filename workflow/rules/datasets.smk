# Obtain each dataset as a manifest (path, label, class name, split) plus images.


localrules:
    download_archive,


rule download_archive:
    # Runs on the head node: compute nodes of a cluster often have no internet.
    output:
        "results/downloads/{dataset}.archive",
    log:
        f"{LOGS}/download_archive/{{dataset}}.log",
    conda:
        "../../envs/data.yaml"
    params:
        url=lambda wildcards: dataset_spec(wildcards)["url"],
        sha256=lambda wildcards: dataset_spec(wildcards)["sha256"],
    script:
        "../scripts/download_archive.py"


rule obtain_dataset:
    input:
        archive=downloaded_archive,
    output:
        manifest="results/datasets/{dataset}/manifest.csv",
        classes="results/datasets/{dataset}/classes.json",
        images=directory("results/datasets/{dataset}/images"),
    log:
        f"{LOGS}/obtain_dataset/{{dataset}}.log",
    # On a cluster, one job with the split and the image cache (see profiles/slurm).
    group:
        "prep"
    conda:
        "../../envs/torch.yaml"
    params:
        spec=dataset_spec,
        code=dataset_code,
    script:
        "../scripts/obtain_dataset.py"

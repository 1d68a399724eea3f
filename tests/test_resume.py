"""Resume after kill or preemption: a training job killed with SIGKILL (mid-epoch, between epochs,
in the middle of its checkpoint write) and run again by the same `snakemake` command resumes from
its last finished epoch and ends bit-identical to a run that was never interrupted."""

import csv
import json

import pytest
import torch
from test_workflow import IMAGES_PER_CLASS, grid_config, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.e2e

CELL = "results/cells/digits/1.0/resnet18/none/full/linear/seed0"
CHECKPOINT = "results/checkpoints/digits/1.0/resnet18/none/full/linear/seed0/lr1.0.pt"
TRAIN_LOG = "results/logs/train_candidate/digits/1.0/resnet18/none/full/linear/seed0/lr1.0.log"


def config():
    config = grid_config({"digits": {"source": "builtin", "name": "digits", "max_per_class": IMAGES_PER_CLASS}})
    config["grid"]["strategies"] = ["full"]
    config["train"].update(epochs=3, augment="flip", batch_size=8)  # augmentation: the generator matters
    return config


def finished(workdir):
    model = torch.load(workdir / CELL / "lr1.0" / "model.pt", weights_only=True)["state_dict"]
    metrics = json.loads((workdir / CELL / "test.json").read_text())
    metrics.pop("inference")  # wall time
    with open(workdir / CELL / "lr1.0" / "history.csv") as handle:  # without the wall times
        history = [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(handle)]
    return model, metrics, history


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    write_config(workdir, config())
    snakemake(workdir)
    return finished(workdir)


@pytest.mark.parametrize("failpoint", ["mid_epoch:2", "epoch_end:1", "checkpoint_write:2"])
def test_a_killed_job_resumes_to_the_same_result(tmp_path, uninterrupted, failpoint, monkeypatch):
    write_config(tmp_path, config())
    monkeypatch.setenv("TRANSFERGRID_FAILPOINT", failpoint)
    killed = snakemake(tmp_path, check=False)
    assert killed.returncode != 0
    assert (tmp_path / CHECKPOINT).is_file()  # the last finished epoch's state survived the kill
    assert not (tmp_path / CELL / "lr1.0" / "model.pt").exists()
    monkeypatch.delenv("TRANSFERGRID_FAILPOINT")
    assert planned_jobs(tmp_path)["train_candidate"] == 1
    snakemake(tmp_path)
    # Killed in epoch 2, after epoch 1, or while epoch 2's checkpoint was being written: epoch 1's
    # checkpoint is the last complete one.
    assert "resumed from epoch 1" in (tmp_path / TRAIN_LOG).read_text()
    assert not (tmp_path / CHECKPOINT).exists()  # removed once the outputs were complete
    assert not list((tmp_path / CHECKPOINT).parent.glob(".*tmp*"))  # the interrupted write's leftover too
    model, metrics, history = finished(tmp_path)
    reference_model, reference_metrics, reference_history = uninterrupted
    assert model.keys() == reference_model.keys()
    assert all(torch.equal(model[key], reference_model[key]) for key in model)
    assert metrics == reference_metrics and history == reference_history


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path, monkeypatch):
    write_config(tmp_path, config())
    monkeypatch.setenv("TRANSFERGRID_FAILPOINT", "epoch_end:1")
    killed = snakemake(tmp_path, check=False)
    monkeypatch.delenv("TRANSFERGRID_FAILPOINT")
    assert killed.returncode != 0 and (tmp_path / CHECKPOINT).is_file()
    edited = config()
    edited["train"]["label_smoothing"] = 0.1
    write_config(tmp_path, edited)
    snakemake(tmp_path)
    log = (tmp_path / TRAIN_LOG).read_text()
    assert "belongs to other settings: starting afresh" in log and "resumed from" not in log

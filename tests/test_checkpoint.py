"""A training checkpoint resumes only into the settings and the code version it was written by."""

import pytest
import torch

from transfergrid.checkpoint import Checkpoint

SETTINGS = {"backbone": "resnet18", "lr": 0.01}


def saved(tmp_path, code_version="c0de"):
    checkpoint = Checkpoint(tmp_path / "cell" / "lr1.0.pt", SETTINGS, code_version)
    checkpoint.save({"epoch": 2, "model": {"w": torch.ones(2)}})
    return checkpoint


def test_the_same_settings_and_code_resume(tmp_path):
    path = saved(tmp_path).path
    state = Checkpoint(path, dict(SETTINGS), "c0de").load()
    assert state["epoch"] == 2 and torch.equal(state["model"]["w"], torch.ones(2))


@pytest.mark.parametrize(
    ("settings", "code_version", "what"),
    [({**SETTINGS, "lr": 0.1}, "c0de", "settings"), (SETTINGS, "beef", "code")],
)
def test_other_settings_or_code_start_afresh_and_remove_the_checkpoint(tmp_path, settings, code_version, what):
    path = saved(tmp_path).path
    lines = []
    assert Checkpoint(path, settings, code_version).load(log=lines.append) is None
    assert lines == [f"checkpoint {path} belongs to other {what}: starting afresh"]
    assert not path.exists()

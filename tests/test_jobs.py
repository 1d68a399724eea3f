"""run_job: bad input is one line in the log and on stderr; a bug leaves its whole traceback in the log."""

import os
from types import SimpleNamespace

import pytest

from transfergrid.errors import DataError
from transfergrid.jobs import run_job


def _job(tmp_path):
    """The part of Snakemake's ``snakemake`` object that run_job uses."""
    return SimpleNamespace(log=[str(tmp_path / "job.log")], rule="x")


def _parse_labels(text):
    return [int(field) for field in text.split(",")]


def test_unexpected_exception_puts_the_whole_traceback_in_the_log_and_fails(tmp_path):
    def main(smk, log):
        log("starting")
        _parse_labels("1,2,cat")

    with pytest.raises(ValueError, match="invalid literal"):
        run_job(_job(tmp_path), main)
    text = (tmp_path / "job.log").read_text()
    assert text.startswith("starting\nunexpected error in rule x:\nTraceback (most recent call last):\n")
    # every frame down to the one that raised, and the exception itself
    assert "in main" in text and "in _parse_labels" in text and "int(field)" in text
    assert text.rstrip().endswith("ValueError: invalid literal for int() with base 10: 'cat'")


def test_chained_exception_keeps_its_cause_in_the_log(tmp_path):
    def main(smk, log):
        try:
            {}["missing"]
        except KeyError as error:
            raise RuntimeError("lookup failed") from error

    with pytest.raises(RuntimeError):
        run_job(_job(tmp_path), main)
    text = (tmp_path / "job.log").read_text()
    assert "KeyError: 'missing'" in text and "direct cause" in text and "RuntimeError: lookup failed" in text


def test_transfergrid_error_is_one_line_in_log_and_on_stderr(tmp_path, capsys):
    def main(smk, log):
        raise DataError("dataset 'pets' has 1 class ('cat')")

    with pytest.raises(SystemExit) as exit_info:
        run_job(_job(tmp_path), main)
    assert exit_info.value.code == 1
    assert (tmp_path / "job.log").read_text() == "error: dataset 'pets' has 1 class ('cat')\n"
    assert capsys.readouterr().err == "transfergrid error in rule x: dataset 'pets' has 1 class ('cat')\n"


def test_output_of_a_successful_job_goes_to_the_log(tmp_path, capsys):
    def main(smk, log):
        print("from print")
        log("from log")

    run_job(_job(tmp_path), main)
    assert (tmp_path / "job.log").read_text() == "from print\nfrom log\n"
    assert capsys.readouterr() == ("", "")


def test_a_gpu_job_leases_a_device_for_its_lifetime(tmp_path, monkeypatch):
    """A job with `resources: gpu` runs with CUDA_VISIBLE_DEVICES pointing at the GPU it leased; a
    second job meanwhile gets another one (simulated devices: no GPU needed)."""
    import transfergrid.jobs as jobs
    from transfergrid import gpus

    monkeypatch.setattr(jobs, "DEFAULT_LEASE_DIR", tmp_path / "leases")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    seen = []

    def job(name):
        return SimpleNamespace(
            log=[str(tmp_path / f"{name}.log")],
            rule=name,
            resources=SimpleNamespace(gpu=1),
            config={"resources": {"gpu_devices": [0, 1]}},
        )

    with gpus.lease_gpu(tmp_path / "leases", devices=[0]):  # GPU 0 is taken by another job
        os.environ.pop("CUDA_VISIBLE_DEVICES")
        run_job(job("outer"), lambda smk, log: seen.append(os.environ["CUDA_VISIBLE_DEVICES"]))
    assert seen == ["1"]
    assert "leased GPU 1" in (tmp_path / "outer.log").read_text()
    run_job(SimpleNamespace(log=[str(tmp_path / "cpu.log")], rule="cpu"), lambda smk, log: seen.append(None))
    assert "CUDA_VISIBLE_DEVICES" not in os.environ

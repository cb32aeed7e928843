"""The multirun summary: one row per job, and the jobs grouped over seeds and folds with mean, std and 95 % CI."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from scipy import stats

from visiontrain.sweeps.summary import write_summary


def write_job(sweep: Path, job: int, overrides: list[str], metrics: dict | None) -> None:
    folder = sweep / str(job)
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps({**metrics, "best_model_path": None}))


# val/acc of 3 seeds at each of two learning rates, and one lr with a failed job
RESULTS = {
    "model.optimizer.lr=0.2": [0.90, 0.93, 0.91],
    "model.optimizer.lr=0.4": [0.92, 0.94, 0.95],
    "model.optimizer.lr=0.8": [0.50, 0.52, None],
}


@pytest.fixture
def sweep(tmp_path) -> Path:
    job = 0
    for lr, values in RESULTS.items():
        for seed, value in zip((1, 2, 3), values):
            metrics = None if value is None else {"val/acc": value, "test/acc": value - 0.01}
            write_job(tmp_path, job, ["experiment=cifar10_fast", f"seed={seed}", lr], metrics)
            job += 1
    return tmp_path


def test_jobs_differing_only_in_seed_are_grouped_with_mean_std_and_a_t_interval(sweep):
    write_summary(sweep, "val/acc", "max")
    with (sweep / "summary.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 9  # one row per job, as before
    with (sweep / "summary_groups.csv").open() as f:
        groups = list(csv.DictReader(f))
    assert [g["setting"] for g in groups] == [f"model.optimizer.lr={lr}" for lr in ("0.4", "0.2", "0.8")]
    assert [g["n"] for g in groups] == ["3", "3", "2"] and groups[2]["failed"] == "1"
    for group in groups:
        values = [v for v in RESULTS[group["setting"]] if v is not None]
        mean, std = statistics.fmean(values), statistics.stdev(values)
        half = stats.t.ppf(0.975, len(values) - 1) * std / math.sqrt(len(values))
        assert float(group["val/acc mean"]) == pytest.approx(mean, rel=1e-5)
        assert float(group["val/acc std"]) == pytest.approx(std, rel=1e-5)
        assert float(group["val/acc 95% low"]) == pytest.approx(mean - half, rel=1e-5)
        assert float(group["val/acc 95% high"]) == pytest.approx(mean + half, rel=1e-5)
        assert float(group["test/acc mean"]) == pytest.approx(mean - 0.01, rel=1e-5)


def test_the_summary_says_when_intervals_overlap(sweep):
    write_summary(sweep, "val/acc", "max")
    text = (sweep / "summary.md").read_text()
    # lr 0.4 (0.937 ± 0.015) and lr 0.2 (0.913 ± 0.015) overlap with n=3; lr 0.8 is far below
    assert "overlap for model.optimizer.lr=0.4 (rank 1) and model.optimizer.lr=0.2 (rank 2)" in text
    assert "does not overlap that of model.optimizer.lr=0.8" in text
    assert "| 1 | `model.optimizer.lr=0.4` | 0.9367 ± 0.0153" in text


def test_folds_group_like_seeds_and_single_jobs_are_flagged(tmp_path):
    for job, (fold, lr, value) in enumerate([(0, 0.1, 0.8), (1, 0.1, 0.7), (0, 0.2, 0.6)]):
        write_job(tmp_path, job, [f"data.fold={fold}", f"model.optimizer.lr={lr}"], {"val/acc": value})
    write_summary(tmp_path, "val/acc", "max")
    with (tmp_path / "summary_groups.csv").open() as f:
        groups = list(csv.DictReader(f))
    assert [(g["setting"], g["n"]) for g in groups] == [
        ("model.optimizer.lr=0.1", "2"),
        ("model.optimizer.lr=0.2", "1"),
    ]
    assert groups[1]["val/acc std"] == ""  # one job: no spread to report
    assert "Without repeats (n=1, no interval): model.optimizer.lr=0.2" in (tmp_path / "summary.md").read_text()

"""A signal is never "success" (issue #26): SIGTERM and SIGINT, sent to real processes, leave a resumable
checkpoint, one line naming the signal, the epoch and the step, and the shell's status 128 + signal; a stopped
sweep keeps its stopped trial resumable and still writes the summary of what finished."""

from __future__ import annotations

import csv
import json
import signal

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import run_cli, run_process
from tests.test_cli import run_dirs
from tests.test_run_integrity import RUN  # short MNIST runs: 8 steps per epoch, 2 epochs


def signal_at(step: int, name: str, job: int | None = None) -> list[str]:
    at = ["+callbacks.stop._target_=tests.interrupt.SignalAtStep", f"+callbacks.stop.step={step}"]
    return at + [f"+callbacks.stop.name={name}"] + ([f"+callbacks.stop.job={job}"] if job is not None else [])


@pytest.mark.process
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signalled_run_says_so_exits_128_plus_the_signal_and_resumes(tmp_path, datasets, name):
    # 8 steps per epoch (500 images, 100 of them validation, batches of 64): the signal comes in epoch 2
    result = run_process("train.py", [*RUN, *signal_at(10, name)], cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 128 + signal.Signals[name], result.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    line = f"stopped by {name} at epoch 2 step 10; resume with: python train.py resume={run}"
    assert line in result.stderr.splitlines(), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (run / "metrics.json").exists() and (run / "checkpoints" / "last.ckpt").is_file()
    assert line in (run / "train.log").read_text()

    # the stop's checkpoint is where resume continues: the second epoch is finished and the run tested
    resumed = run_cli("train.py", [f"resume={run}", "callbacks.stop=null"], cwd=tmp_path, data_dir=datasets)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "test/acc" in json.loads((run / "metrics.json").read_text())


@pytest.mark.process
def test_a_signalled_sweep_keeps_its_trial_resumable_and_summarises_what_finished(tmp_path, datasets):
    sweep_args = ["-m", "hparams_search=mnist_optuna", "hydra.sweeper.n_trials=2", *RUN, "trainer.max_epochs=1"]
    result = run_process("train.py", [*sweep_args, *signal_at(3, "SIGTERM", job=1)], cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    (sweep,) = run_dirs(tmp_path, "multiruns")
    assert f"stopped by SIGTERM at epoch 1 step 3; a checkpoint of this trial is in {sweep / '1'}" in result.stderr
    assert f"continue it with the same command and resume={sweep}" in result.stdout + result.stderr
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["status"] for row in rows if row["job"] == "0"] == ["done"]
    study = optuna.load_study(study_name="mnist_simple_cnn", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]

    result = run_cli("train.py", [*sweep_args, f"resume={sweep}"], cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="mnist_simple_cnn", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]

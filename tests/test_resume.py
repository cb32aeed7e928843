"""resume=<run dir>: a killed run continues in place and ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import run_cli, run_process
from tests.test_cli import assert_one_sentence_error, run_dirs
from visiontrain.runs.checkpoint_io import AtomicCheckpointIO

RUN = [
    "extras.print_config=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "data.val_size=100",
    "data.batch_size=32",
    "model.net.width=8",
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
]
KILL = ["+callbacks.kill._target_=tests.interrupt.KillAtStep", "+callbacks.kill.step=18"]


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard curve of a run as TensorBoard shows it."""
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.process
def test_killed_run_resumes_in_place_and_matches_an_uninterrupted_run(tmp_path, datasets):
    reference = tmp_path / "reference"
    reference.mkdir()
    result = run_cli("train.py", RUN, cwd=reference, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    (reference_run,) = run_dirs(reference)

    # SIGKILL in epoch 1, after the checkpoint of epoch 0 (15 steps per epoch): no handler runs
    result = run_process("train.py", RUN + KILL, cwd=tmp_path, data_dir=datasets)
    assert result.returncode == -9
    (run,) = run_dirs(tmp_path)
    assert not (run / "metrics.json").exists()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 15

    # only the run directory is given: the original overrides come back, callbacks.kill=null drops one
    # a process of its own, as a user's resume is: run in the test's process, the TensorBoard comparison below
    # failed in 1 of 3 tries (the curve read back from step 15), not seen in 4 of 4 as a process
    result = run_process("train.py", [f"resume={run}", "callbacks.kill=null"], cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    assert run_dirs(tmp_path) == [run]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 30)

    metrics = json.loads((run / "metrics.json").read_text())
    expected = json.loads((reference_run / "metrics.json").read_text())
    assert Path(metrics.pop("best_model_path")).parent == run / "checkpoints"
    expected.pop("best_model_path")
    assert metrics == pytest.approx(expected, rel=1e-6, abs=1e-7)

    # one TensorBoard run whose curves are the uninterrupted ones: the steps the killed process logged
    # after its checkpoint are hidden, nothing restarts at step 0
    resumed_curves, reference_curves = scalars(run), scalars(reference_run)
    assert resumed_curves.keys() == reference_curves.keys()
    for tag, points in reference_curves.items():
        assert [s for s, _ in resumed_curves[tag]] == [s for s, _ in points], tag
        assert [v for _, v in resumed_curves[tag]] == pytest.approx([v for _, v in points], rel=1e-5), tag

    overrides = OmegaConf.load(run / ".hydra" / "overrides.yaml")
    assert overrides[: len(RUN)] == RUN and overrides[-1] == "callbacks.kill=null"
    # the first attempt's records are kept
    assert OmegaConf.load(run / ".hydra" / "before_resume" / "1" / "overrides.yaml") == RUN + KILL


def test_resume_needs_a_run_directory_with_a_last_checkpoint(tmp_path, datasets):
    result = run_cli("train.py", ["resume=outputs/nowhere"], cwd=tmp_path, data_dir=datasets)
    assert_one_sentence_error(result, "resume=outputs/nowhere: there is no run directory", str(tmp_path / "outputs"))

    empty = tmp_path / "outputs" / "train" / "runs" / "early"
    (empty / ".hydra").mkdir(parents=True)
    result = run_cli("train.py", [f"resume={empty}"], cwd=tmp_path, data_dir=datasets)
    assert_one_sentence_error(result, f"{empty / 'checkpoints' / 'last.ckpt'} does not exist")
    assert [p.name for p in empty.iterdir()] == [".hydra"]  # nothing written into it


def test_checkpoint_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "epoch": 0}, path)

    # a save that fails half-way (here: an object torch.save cannot pickle, after the tensors)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "broken": lambda: None}, path)
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] == 0 and saved["state_dict"]["w"].sum() == 1000
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind

    io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "epoch": 1}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert path.stat().st_mode & 0o044  # readable like any other file the user writes, not owner-only

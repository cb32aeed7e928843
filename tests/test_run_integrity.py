"""Nothing lost, nothing silent (issue #15): the record of a resumed run, diverging runs, kills between checkpoint
writes, exclusive run folders, bad values refused in one sentence, DDP on one node, bad data found at set-up."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tests.conftest import run_cli, run_process
from tests.test_cli import assert_one_sentence_error, run_dirs

RUN = [
    "extras.print_config=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "data.val_size=100",
    "data.batch_size=64",
    "model.net.width=8",
    "trainer.max_epochs=2",
    "logger=csv",
]
KILL_AT_TEST = ["+callbacks.kill._target_=tests.interrupt.KillAtTestStart"]


def test_resume_after_the_last_epoch_keeps_every_metric(tmp_path, datasets):
    result = run_cli("train.py", RUN, cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    finished = json.loads((run / "metrics.json").read_text())
    assert any(k.startswith("train/") for k in finished) and "val/acc_best" in finished

    # resuming a finished run only tests again: its record keeps every metric of the training
    result = run_cli("train.py", [f"resume={run}"], cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed.keys() == finished.keys()
    assert resumed.pop("best_model_path") == finished.pop("best_model_path")
    assert resumed == pytest.approx(finished, rel=1e-6)


@pytest.mark.process
def test_trial_killed_before_its_test_reports_its_true_value_when_resumed(tmp_path, datasets):
    sweep_args = ["-m", "hparams_search=mnist_optuna", "hydra.sweeper.n_trials=2", *RUN, "trainer.max_epochs=1"]
    result = run_process(
        "train.py", sweep_args + KILL_AT_TEST + ["+callbacks.kill.job=1"], cwd=tmp_path, data_dir=datasets
    )
    assert result.returncode == -9
    (sweep,) = run_dirs(tmp_path, "multiruns")
    assert not (sweep / "1" / "metrics.json").exists()
    saved = torch.load(sweep / "1" / "checkpoints" / "last.ckpt", weights_only=True)

    result = run_cli("train.py", [*sweep_args, f"resume={sweep}"], cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="mnist_simple_cnn", storage=f"sqlite:///{sweep / 'optuna.db'}")
    trial = study.trials[1]
    assert trial.state == TrialState.COMPLETE
    metrics = json.loads((sweep / "1" / "metrics.json").read_text())
    assert trial.value == metrics["val/acc_best"]
    best_score = [v for k, v in saved["callbacks"].items() if k.startswith("EpochCheckpoint")][0]["best_model_score"]
    assert metrics["val/acc_best"] == pytest.approx(float(best_score))
    assert any(k.startswith("train/") for k in metrics) and "val/loss" in metrics
    rows = (sweep / "summary.csv").read_text().splitlines()
    assert all(",done," in row or row.endswith(",done") or "done" in row.split(",") for row in rows[1:])


DIVERGE_IN_EPOCH_2 = [
    "+callbacks.diverge._target_=tests.interrupt.LearningRateAtEpoch",
    "+callbacks.diverge.epoch=2",
    "+callbacks.diverge.lr=1e12",
    "model.scheduler=null",
]


def test_a_diverging_run_stops_with_one_sentence_and_keeps_its_finite_checkpoint(tmp_path, datasets):
    result = run_cli("train.py", [*RUN, *DIVERGE_IN_EPOCH_2], cwd=tmp_path, data_dir=datasets)
    assert_one_sentence_error(result, "the training loss became", "at step", "learning rate 1e+12", "lower ")
    (run,) = run_dirs(tmp_path)
    assert not (run / "metrics.json").exists()
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    step = int(error.split("at step ")[1].split()[0])
    checkpoints = sorted((run / "checkpoints").glob("*.ckpt"))
    first_epoch = torch.load(checkpoints[0], weights_only=True)["global_step"]
    assert first_epoch < step <= first_epoch + 10  # in the second epoch, within the check interval
    assert [p.name for p in checkpoints] == ["epoch_001.ckpt", "last.ckpt"]
    for path in checkpoints:
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), path


def test_a_diverging_trial_fails_and_the_sweep_goes_on(tmp_path, datasets):
    sweep_args = ["-m", "hparams_search=mnist_optuna", "hydra.sweeper.n_trials=2", *RUN]
    result = run_cli(
        "train.py", sweep_args + DIVERGE_IN_EPOCH_2 + ["+callbacks.diverge.job=0"], cwd=tmp_path, data_dir=datasets
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = run_dirs(tmp_path, "multiruns")
    study = optuna.load_study(study_name="mnist_simple_cnn", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "Traceback" not in result.stderr
    assert "the training loss became" in result.stderr


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["data.batch_size=0"], ["data.batch_size=0", "1 or more"]),
        (["trainer.max_epochs=-1"], ["trainer.max_epochs=-1", "model.scheduler=null"]),
        (["trainer.max_epochs=-3"], ["trainer.max_epochs=-3"]),
        (["model.optimizer.lr=-1"], ["model.optimizer.lr=-1", "above 0"]),
        (["data.val_size=1.5"], ["data.val_size=1.5", "whole number of images"]),
        (["-m", "hparams_search=mnist_optuna", "hydra.sweeper.n_trials=-2"], ["hydra.sweeper.n_trials=-2"]),
        (
            ["-m", "hparams_search=mnist_optuna", "hydra.sweeper.storage=journal:/no/such/folder/j.log"],
            ["hydra.sweeper.storage=journal:/no/such/folder/j.log", "the folder /no/such/folder does not exist"],
        ),
        (
            ["-m", "hparams_search=mnist_optuna", "hydra.sweeper.storage=postgresql://me:s3cret@127.0.0.1:9/db"],
            ["hydra.sweeper.storage=postgresql://me:***@127.0.0.1:9/db", "cannot be opened"],
        ),
    ],
)
def test_bad_values_get_one_sentence(tmp_path, datasets, args, fragments):
    flags = [a for a in args if a == "-m"]  # Hydra reads its flags before the overrides
    result = run_cli("train.py", [*flags, *RUN, *(a for a in args if a != "-m")], cwd=tmp_path, data_dir=datasets)
    assert_one_sentence_error(result, *fragments)
    assert "s3cret" not in result.stdout + result.stderr
    for written in tmp_path.rglob("*.yaml"):  # a sweep's multirun.yaml is written before its storage is opened
        assert "s3cret" not in written.read_text(), written


def test_a_validation_share_is_below_one(make_config):
    from visiontrain.errors import UserError
    from visiontrain.runs.config import check_values

    with pytest.raises(UserError, match=r"data.val_fraction=1.5: give the share of training images .* below 1"):
        check_values(make_config("train", ["data=imagefolder", "data.root=.", "data.val_fraction=1.5"]))


def test_a_jobs_hydra_record_keeps_no_storage_password(tmp_path):
    from omegaconf import OmegaConf

    from visiontrain.sweeps.summary import PasswordsMasked

    url = "postgresql://me:s3cret@db.example:5432/studies"
    hydra = {"sweeper": {"storage": url}, "output_subdir": ".hydra", "runtime": {"output_dir": str(tmp_path)},
             "overrides": {"hydra": [f"hydra.sweeper.storage={url}"], "task": ["seed=1"]}}  # fmt: skip
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create({"hydra": hydra}), tmp_path / ".hydra" / "hydra.yaml")
    PasswordsMasked().on_job_start(OmegaConf.create({"hydra": hydra}))
    record = OmegaConf.load(tmp_path / ".hydra" / "hydra.yaml")
    assert record.hydra.sweeper.storage == "postgresql://me:***@db.example:5432/studies"
    assert list(record.hydra.overrides.hydra) == ["hydra.sweeper.storage=postgresql://me:***@db.example:5432/studies"]
    assert list(record.hydra.overrides.task) == ["seed=1"]


def bad_checkpoints(folder: Path) -> dict[str, Path]:
    """A checkpoint cut short, a file that is no checkpoint, and a pickle that would run code if loaded unsafely."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}, "epoch": 0, "global_step": 1}, good)
    truncated = folder / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = folder / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    unsafe = folder / "unsafe.ckpt"
    torch.save({"state_dict": {}, "thing": Path("/")}, unsafe)  # a class torch's safe loader refuses
    return {"truncated": truncated, "text": text, "unsafe": unsafe}


@pytest.mark.parametrize("kind", ["truncated", "text", "unsafe"])
def test_a_bad_checkpoint_file_gets_one_sentence_everywhere(tmp_path, datasets, kind):
    path = bad_checkpoints(tmp_path / "files")[kind]
    for script, args in (("eval.py", [f"ckpt_path={path}"]), ("train.py", [*RUN, f"ckpt_path={path}"])):
        result = run_cli(script, args, cwd=tmp_path, data_dir=datasets)
        assert_one_sentence_error(result, str(path))
        assert "weights_only=False" not in result.stderr and "PytorchStreamReader" not in result.stderr
        if kind == "unsafe":
            assert "not a file this tool can load safely" in result.stderr


def test_a_refused_resume_leaves_the_run_folder_untouched(tmp_path, datasets):
    run = tmp_path / "outputs" / "train" / "runs" / "cut"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("[]\n")
    bad = bad_checkpoints(tmp_path / "files")
    (run / "checkpoints" / "last.ckpt").write_bytes(bad["truncated"].read_bytes())
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    result = run_cli("train.py", [f"resume={run}"], cwd=tmp_path, data_dir=datasets)
    assert_one_sentence_error(result, f"resume={run}", "truncated", "nothing to continue")
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before


@pytest.mark.parametrize(
    ("file", "moment", "epoch", "continued_from"),
    [
        ("any", "created", 2, 1),  # a 0-byte temporary file; last.ckpt still the first epoch's
        ("last.ckpt", "written", 1, 1),  # epoch_001.ckpt in place, last.ckpt not yet
    ],
)
@pytest.mark.process
def test_a_kill_between_checkpoint_writes_resumes_from_the_newest_complete_one(
    tmp_path, datasets, file, moment, epoch, continued_from
):
    kill = [
        "+callbacks.kill._target_=tests.interrupt.KillAtCheckpointWrite",
        f"+callbacks.kill.file={file}",
        f"+callbacks.kill.moment={moment}",
        f"+callbacks.kill.epoch={epoch}",
    ]
    result = run_process("train.py", RUN + kill, cwd=tmp_path, data_dir=datasets)
    assert result.returncode == -9
    (run,) = run_dirs(tmp_path)
    checkpoints = run / "checkpoints"
    (leftover,) = checkpoints.glob(".*.tmp" if file == "any" else f".{file}.*.tmp")
    assert (moment == "created") == (leftover.stat().st_size == 0)

    result = run_cli("train.py", [f"resume={run}", "callbacks.kill=null"], cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(checkpoints.glob(".*.tmp"))  # swept at start
    metrics = json.loads((run / "metrics.json").read_text())
    assert "val/acc_best" in metrics and "test/acc" in metrics and "train/loss" in metrics
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1  # the second (last) epoch, counted from 0: the run went to its end
    if file == "last.ckpt":
        assert f"continuing from epoch_00{continued_from}.ckpt" in result.stderr + result.stdout


def test_a_run_folder_is_held_by_one_run_and_a_stale_lock_is_taken_over(tmp_path, datasets):
    import socket
    import subprocess

    from visiontrain.runs.run_lock import _start_time

    folder = tmp_path / "shared"
    folder.mkdir()
    lock = folder / ".lock"
    # a live owner: another process on this host
    owner = subprocess.Popen(["sleep", "120"])
    try:
        lock.write_text(json.dumps({"pid": owner.pid, "host": socket.gethostname(), "started": _start_time(owner.pid)}))
        result = run_cli("train.py", [*RUN, f"hydra.run.dir={folder}"], cwd=tmp_path, data_dir=datasets)
    finally:
        owner.kill()
        owner.wait()
    assert_one_sentence_error(result, f"{folder} is in use by another run (process {owner.pid} on ")
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # nothing written by the refused run

    # the owner has ended (SIGKILL: no handler removed its lock): the next run takes the folder over
    ended = subprocess.run(["true"], check=True)
    dead = subprocess.Popen(["sleep", "0"])
    dead.wait()
    assert ended.returncode == 0
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "1"}))
    result = run_cli(
        "train.py", [*RUN, "trainer.max_epochs=1", f"hydra.run.dir={folder}"], cwd=tmp_path, data_dir=datasets
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (folder / "metrics.json").is_file() and not lock.exists()  # given back at the end


@pytest.mark.process
def test_single_node_ddp_store_listens_on_loopback_only(tmp_path, datasets):
    probe = tmp_path / "store.json"
    args = [
        *RUN,
        "trainer.max_epochs=1",
        "test=false",
        "trainer=ddp_cpu",
        "trainer.devices=2",
        "+callbacks.probe._target_=tests.probes.StoreAddresses",
        f"+callbacks.probe.file={probe}",
    ]
    result = run_process("train.py", args, cwd=tmp_path, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    addresses = json.loads(probe.read_text())["addresses"]
    # 0100007F: 127.0.0.1 (little-endian hex); all interfaces would be 00000000 or the IPv6 ::
    assert addresses == ["0100007F"], addresses


def test_an_address_set_for_several_nodes_is_left_to_torch():
    from visiontrain.runs.ddp import store_on_loopback

    calls = []
    wrapped = store_on_loopback(lambda *args, **kwargs: calls.append(args) or "torch's store")
    assert wrapped("10.1.2.3", 29500, 0, 4, None) == "torch's store"  # MASTER_ADDR of the first node
    assert wrapped("127.0.0.1", 29500, 1, 2, None) == "torch's store"  # a client: no server to bind
    assert len(calls) == 2


def test_runs_started_together_get_folders_of_their_own(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from visiontrain.runs.folders import new_run_dir

    def start(_: int) -> str:
        return new_run_dir(str(tmp_path / "runs"), "2026-01-01_00-00-00", "train", "mnist", "simple_cnn")

    with ThreadPoolExecutor(8) as pool:
        folders = list(pool.map(start, range(8)))
    assert len(set(folders)) == 8 and all(Path(f).is_dir() for f in folders)


SEGMENTATION = [
    "model=unet",
    "data=mask_folder",
    "data.num_classes=3",
    "data.class_names=[background,red,green]",
    "data.image_size=32",
    "data.batch_size=4",
    "data.num_workers=0",
    "extras.print_config=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "trainer.max_epochs=1",
    "logger=csv",
]


def test_a_bad_test_mask_is_found_at_set_up_before_the_first_step(tmp_path):
    import numpy as np

    from tests import formats

    root = formats.write_mask_folder(tmp_path / "masks", n=10, split_folders=True)
    bad = sorted((root / "test" / "masks").glob("*.png"))[0]
    formats.save_palette_png(bad, np.full((48, 64), 7, dtype=np.uint8))  # class 7 of 3, in the test split
    result = run_cli("train.py", [*SEGMENTATION, f"data.root={root}"], cwd=tmp_path)
    assert_one_sentence_error(result, f"mask {bad} holds values [7] outside the 3 declared classes")
    assert not list(tmp_path.glob("outputs/train/runs/*/checkpoints"))  # refused before training


def test_set_up_checks_read_only_new_or_changed_masks_on_a_second_start(tmp_path, monkeypatch):
    import numpy as np

    from tests import formats
    from visiontrain.data import segmentation
    from visiontrain.data.pennfudan_seg import PennFudanSegDataModule

    root = formats.write_pennfudan(tmp_path / "PennFudanPed", n=10)
    common = dict(num_classes=2, class_names=["background", "person"], image_size=32, num_workers=0, download=False)
    read = []
    real = segmentation.read_index_mask
    monkeypatch.setattr(segmentation, "read_index_mask", lambda path: read.append(path) or real(path))

    PennFudanSegDataModule(root=str(root), **common).setup("fit")
    assert len(read) == 10  # every split's masks, once
    read.clear()
    PennFudanSegDataModule(root=str(root), **common).setup("fit")
    assert read == []  # unchanged: remembered

    # a PennFudan mask of the wrong size is refused at set-up, whichever split it falls in
    mask = sorted((root / "PedMasks").glob("*.png"))[3]
    formats.save_palette_png(mask, np.zeros((20, 20), dtype=np.uint8))
    with pytest.raises(segmentation.UserError, match=f"mask {mask} is 20x20 but image"):
        PennFudanSegDataModule(root=str(root), **common).setup("fit")
    assert read == [mask]

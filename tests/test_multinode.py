"""One run on several nodes. torchrun: two "nodes" on this machine (two torchrun agents, gloo on 127.0.0.1) write one
run folder through global rank 0, train as one process does with the same global batch, and resume together. SLURM:
the launcher's nodes, tasks and GPUs per node follow the Trainer, the sbatch script submitit writes asks for them,
and a task of a 2-node job finds its place in it (no cluster here: its environment variables are set)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import OmegaConf, open_dict

from tests.conftest import PROJECT_ROOT, QUIET
from tests.test_cli import run_dirs
from visiontrain.cli.checks import check_overrides
from visiontrain.cli.train import train
from visiontrain.errors import UserError
from visiontrain.runs import ddp, run_lock
from visiontrain.runs.config import CONFIG_DIR

# 5 steps of a tiny CNN, stopped after its first of two epochs (an interrupted run, which resume= continues); no
# dropout, whose draws differ between one process and two, and no figures, the slowest part of so short a run
RUN = [*QUIET, "data.val_size=100", "model.net.width=8", "model.net.dropout=0", "callbacks.learning_curves=null",
       "trainer.limit_train_batches=5", "trainer.num_sanity_val_steps=0", "trainer.max_epochs=2", "test=false",
       "+callbacks.stop._target_=lightning.pytorch.callbacks.EarlyStopping", "+callbacks.stop.monitor=val/acc",
       "+callbacks.stop.mode=max", "+callbacks.stop.stopping_threshold=0.0"]  # fmt: skip
# the two-node command, with 16 images per node
TWO_NODES = ["trainer=ddp_cpu", "trainer.num_nodes=2", "trainer.devices=1", "data.batch_size=16"]
# measured: 1.2e-3 on val/loss and 9e-4 on train/loss after 5 steps; what remains is BatchNorm, whose batch
# statistics come from each process's 16 images, not from all 32
TOLERANCE = 5e-3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(args: list[str], cwd: Path, data_dir: Path) -> list[tuple[subprocess.Popen, Path]]:
    """The same torchrun command on two "nodes", the second started a moment later (its run would be named after
    another second, or get _2 for the same one)."""
    env = {**os.environ, "DATA_DIR": str(data_dir), "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    port, nodes = free_port(), []
    for rank in (0, 1):
        torchrun = ["-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
                    "--master-addr=127.0.0.1", f"--master-port={port}"]  # fmt: skip
        output = cwd / f"node{rank}_{time.monotonic_ns()}.txt"
        with output.open("w") as out:
            command = [sys.executable, *torchrun, str(PROJECT_ROOT / "train.py"), *args]
            nodes.append((subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT), output))
        time.sleep(1.5)
    return nodes


def wait_for(nodes: list[tuple[subprocess.Popen, Path]]) -> None:
    try:
        for process, output in nodes:
            assert process.wait(timeout=600) == 0, output.read_text()[-3000:]
    finally:
        for process, _ in nodes:
            process.kill()


def train_here(make_config, overrides: list[str]) -> dict[str, float]:
    """A DDP run of one process inside the test: Lightning's launcher sets MASTER_PORT, LOCAL_RANK, ... in the
    environment and leaves its process group behind; neither may reach the next test."""
    with mock.patch.dict(os.environ):
        try:
            return train(make_config("train", overrides))
        finally:
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()


@pytest.mark.process
def test_two_torchrun_nodes_write_one_run_and_resume_it_together(tmp_path, datasets, make_config):
    nodes = start_nodes([*RUN, *TWO_NODES], tmp_path, datasets)
    # meanwhile the reference: one process with both nodes' 32 images per step. Under the DDP strategy even one
    # process gets Lightning's distributed sampler, whose shuffled order depends on the seed and epoch only: its
    # step k holds the images of step k on both nodes together
    reference = train_here(make_config, [*RUN, "trainer=ddp_cpu", "trainer.devices=1", "data.batch_size=32"])
    wait_for(nodes)

    (run,) = run_dirs(tmp_path)  # not one folder per node
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("train/loss", "val/loss", "val/acc"):
        assert metrics[name] == pytest.approx(reference[name], abs=TOLERANCE), name
    # global rank 0 writes the records; the process on node 1 only its log
    assert sorted(p.name for p in run.glob("*.log")) == ["train.log", "train_ddp_process_1.log"]
    assert sorted(p.name for p in (run / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_001.ckpt", "last.ckpt"]
    writers = {p.name.split(".")[-2] for p in (run / "tensorboard").glob("events.out.tfevents.*")}
    assert len(writers) == 1 and len(list(run.rglob("hparams.yaml"))) == 1  # one TensorBoard run, one process
    assert (run / "train.log").read_text().count("final metrics written") == 1
    assert "final metrics written" not in (run / "train_ddp_process_1.log").read_text()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 5

    # the run, interrupted after its first epoch, continues on both nodes: the same command with resume=<run dir>
    wait_for(start_nodes([f"resume={run}"], tmp_path, datasets))
    assert run_dirs(tmp_path) == [run]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (1, 10)
    # rank 0 alone took the run's command line back (and kept the first attempt's records)
    assert [p.name for p in (run / ".hydra" / "before_resume").iterdir()] == ["1"]
    assert (run / "train_ddp_process_1.log").read_text().count("MNIST: 500 train") == 2
    writers = {p.name.split(".")[-2] for p in (run / "tensorboard").glob("events.out.tfevents.*")}
    assert len(writers) == 2  # rank 0 of each attempt, in the same TensorBoard run
    assert json.loads((run / "metrics.json").read_text())["val/loss"] != metrics["val/loss"]


def test_torchrun_processes_take_rank_0s_command_line_and_folder(monkeypatch):
    torchrun = {"TORCHELASTIC_RUN_ID": "none", "TORCHELASTIC_USE_AGENT_STORE": "True", "WORLD_SIZE": "2",
                "RANK": "1", "GROUP_RANK": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}  # fmt: skip
    for key, value in torchrun.items():
        monkeypatch.setenv(key, value)

    class Store:  # rank 0's answer, as share_run_dir leaves it in torchrun's store
        def get(self, key: str) -> bytes:
            return json.dumps({"run_dir": "/runs/a", "args": ["seed=3", 'hydra.run.dir="/runs/a"']}).encode()

    monkeypatch.setattr(ddp, "_torchrun_store", Store)
    assert ddp.job_command_line(["seed=1"]) == [
        "seed=3", 'hydra.run.dir="/runs/a"', "hydra.output_subdir=null", "hydra.job.name=train_ddp_process_1"
    ]  # fmt: skip
    assert ddp.job_command_line(["--cfg", "job"]) == ["--cfg", "job"]  # prints, runs nothing: on its own
    with pytest.raises(UserError, match="torchrun starts the processes of one run: leave -m out"):
        ddp.job_command_line(["-m", "seed=1,2"])
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    with pytest.raises(UserError, match="cannot agree on one run folder"):
        ddp.job_command_line(["seed=1"])


def slurm_config(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)


# the SLURM command: one job (python train.py -m ...) on 2 nodes with 4 GPUs each
SLURM_JOB = ["hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=4", "trainer=ddp", "trainer.num_nodes=2",
             "trainer.devices=4"]  # fmt: skip


def test_slurm_launcher_follows_the_trainer_and_refuses_what_disagrees():
    launcher = slurm_config(["trainer=ddp", "trainer.num_nodes=2", "trainer.devices=4"]).hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    launcher = slurm_config([]).hydra.launcher  # one device on one node by default
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (1, 1, 1)
    check_overrides("train", ["-m", "hydra/launcher=slurm", *SLURM_JOB, "seed=1,2"])

    refused = {
        "hydra.launcher.nodes=2 disagrees with trainer.num_nodes=1": ["hydra.launcher.nodes=2", "trainer=ddp"],
        "hydra.launcher.tasks_per_node=2 disagrees with trainer.devices=4": ["hydra.launcher.tasks_per_node=2",
                                                                             "trainer=ddp", "trainer.devices=4"],
        "hydra.launcher.gpus_per_node=1 disagrees with trainer.devices=4": ["hydra.launcher.gpus_per_node=1",
                                                                           "trainer=ddp", "trainer.devices=4"],
        "trainer.devices=auto: on SLURM give the number of devices per node": ["trainer.devices=auto"],
    }  # fmt: skip
    for sentence, overrides in refused.items():
        with pytest.raises(UserError, match=sentence.replace(".", r"\.")) as refusal:
            check_overrides("train", ["-m", "hydra/launcher=slurm", *overrides])
        assert ". " not in str(refusal.value)  # one sentence
    # a CPU job on SLURM asks for no GPU
    check_overrides("train", ["-m", "hydra/launcher=slurm", "trainer=ddp_cpu", "hydra.launcher.gpus_per_node=null"])


def sbatch_script(tmp_path: Path, monkeypatch, overrides: list[str]) -> str:
    """The sbatch script hydra-submitit-launcher's submitit would submit for the first job of ``overrides``: the
    launcher as Hydra makes it, with the executor's submission stopped short of sbatch."""
    import submitit

    fake_bin = tmp_path / "bin"  # submitit's SLURM executor looks for srun before anything else
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    executors = []
    monkeypatch.setattr(submitit.AutoExecutor, "map_array", lambda self, *args: executors.append(self) or [])
    cfg = slurm_config(overrides)
    with open_dict(cfg):
        cfg.hydra.sweep.dir = str(tmp_path / "sweep")
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    launcher.launch([["seed=1"]], initial_job_idx=0)
    (executor,) = executors
    return executor._executor._make_submission_file_text("python -u -m submitit.core._submit <folder>", "job")


def requeue_signal(script: str) -> signal.Signals:
    """The signal an sbatch script asks SLURM for before the time limit (``#SBATCH --signal=USR1@120``)."""
    (line,) = [line for line in script.splitlines() if line.startswith("#SBATCH --signal=")]
    name = line.split("=", 1)[1].split("@")[0].removeprefix("B:").removeprefix("R:")
    return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]


def test_sbatch_script_of_a_two_node_job(tmp_path, monkeypatch):
    listening = SLURMEnvironment().requeue_signal  # (made before the stand-in srun is there, which it would warn of)
    script = sbatch_script(tmp_path, monkeypatch, SLURM_JOB)
    lines = set(script.splitlines())
    assert {"#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4"} <= lines
    assert {"#SBATCH --requeue", "#SBATCH --signal=USR1@120", "#SBATCH --time=240"} <= lines
    # the signal SLURM sends before the time limit is the one Lightning's SLURM environment saves hpc_ckpt_<n>.ckpt
    # on (submitit's own USR2 would requeue without it); every task of the job gets it (not only the batch shell)
    assert requeue_signal(script) == listening == signal.SIGUSR1
    assert script.count("--signal") == 1 and "srun " in script


@pytest.mark.parametrize(("task", "node", "local"), [(0, 0, 0), (5, 1, 1)])
def test_a_task_of_a_two_node_slurm_job_finds_its_place(monkeypatch, task, node, local):
    """As srun starts task ``task`` of the job above (2 nodes x 4 tasks), on CPUs: the Trainer takes its ranks from
    SLURM's variables, and only global rank 0 takes the run folder."""
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_NTASKS": "8", "SLURM_NTASKS_PER_NODE": "4", "SLURM_TASKS_PER_NODE": "4(x2)",
             "SLURM_JOB_NODELIST": "node[01-02]", "SLURM_NODELIST": "node[01-02]", "SLURM_PROCID": str(task),
             "SLURM_NODEID": str(node), "SLURM_LOCALID": str(local)}  # fmt: skip
    cfg = slurm_config(["trainer=ddp_cpu", "trainer.num_nodes=2", "trainer.devices=4"])
    trainer_cfg = OmegaConf.to_container(cfg.trainer)
    del trainer_cfg["default_root_dir"]  # the run folder Hydra would make
    # the Trainer sets the process's rank for Lightning (and MASTER_ADDR/PORT): not beyond this test
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    with mock.patch.dict(os.environ, slurm):
        for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE"):
            os.environ.pop(key, None)
        trainer = instantiate(trainer_cfg, logger=False)
        environment = trainer.strategy.cluster_environment
        assert isinstance(environment, SLURMEnvironment) and environment.main_address == "node01"
        assert (trainer.num_nodes, trainer.num_devices, trainer.world_size) == (2, 4, 8)
        assert (trainer.global_rank, trainer.node_rank, trainer.local_rank) == (task, node, local)
        assert run_lock.first_process() == (task == 0)
        # srun python train.py ...: the tasks have nothing to agree on a new folder in, so it is named
        with pytest.raises(UserError, match=r"srun starts 8 processes of this run.*hydra\.run\.dir="):
            ddp.job_command_line(["trainer=ddp_cpu"])
        named = ["hydra.run.dir=runs/4242"]
        others = ["hydra.output_subdir=null", f"hydra.job.name=train_ddp_process_{task}"]  # write only their log
        assert ddp.job_command_line(named) == (named if task == 0 else [*named, *others])


def test_a_requeued_slurm_job_takes_its_folder_back_from_its_earlier_attempt(tmp_path, monkeypatch):
    """SLURM kills a job before it requeues it (nothing gives the run folder's lock back) and may start it again on
    another node, whose lock the folder's lock cannot check."""
    lock = tmp_path / ".lock"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    for other in ({"slurm_job": "4243", "slurm_restart": 0}, {"slurm_job": "4242", "slurm_restart": 1}, {}):
        # another job's, a node's of this very attempt, a run's outside SLURM: all alive, as far as anyone knows
        lock.write_text(json.dumps({"pid": 12345, "host": "node07", "started": "1", **other}))
        with pytest.raises(UserError, match="is in use by another run"):
            run_lock.acquire(tmp_path)
    lock.write_text(
        json.dumps({"pid": 12345, "host": "node07", "started": "1", "slurm_job": "4242", "slurm_restart": 0})
    )
    run_lock.acquire(tmp_path)
    try:
        assert json.loads(lock.read_text()) | {"started": None} == {
            "pid": os.getpid(), "host": socket.gethostname(), "started": None, "slurm_job": "4242", "slurm_restart": 1
        }  # fmt: skip
    finally:
        run_lock.release(tmp_path)
    assert not lock.exists()

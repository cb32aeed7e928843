"""One Optuna study, many workers: the same sweep command started several times on a shared storage (PostgreSQL
started here from the distribution's packages, or a journal file), a worker SIGKILLed mid-trial, and the study's
report rebuilt from the storage alone."""

from __future__ import annotations

import csv
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from glob import glob
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import PROJECT_ROOT
from tests.test_cli import run_dirs
from visiontrain.sweeps.storage import StorageUnavailable, open_storage, printable, storage_address

STUDY = "mnist_lr"
N_TRIALS = 4
SWEEP = [
    "-m",
    "hparams_search=mnist_optuna",
    f"hydra.sweeper.study_name={STUDY}",
    f"hydra.sweeper.n_trials={N_TRIALS}",
    "extras.print_config=false",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "data.val_size=100",
    "data.batch_size=64",
    "trainer.max_epochs=1",
    "logger=csv",
]


def postgres_binaries() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own on 127.0.0.1 (trust authentication), with an empty database; its URL."""
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run installs it)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver comes with pip install -e '.[dev]'")
    folder = Path(tempfile.mkdtemp(prefix="visiontrain-pg-"))
    as_server = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: as the postgres user the package created
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_server = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_server, *args], check=True, capture_output=True, text=True, timeout=120)

    data = folder / "data"
    run(str(binaries / "initdb"), "-D", str(data), "-U", "visiontrain", "--auth=trust", "-E", "UTF8")
    # visiontrain connects without a password; any other role must give one (test_password_from_the_environment)
    hba = "local all all trust\nhost all visiontrain 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
    (data / "pg_hba.conf").write_text(hba)
    options = f"-k {folder} -c listen_addresses=127.0.0.1 -p {port}"
    run(str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "start")
    try:
        run(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "visiontrain", "sweeps")
        yield f"postgresql://visiontrain@127.0.0.1:{port}/sweeps"
    finally:
        run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def start_worker(args: list[str], cwd: Path, data_dir: Path) -> subprocess.Popen:
    """``python train.py args`` in the background, as a user starts one worker of a sweep."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0", "DATA_DIR": str(data_dir)}
    log = (cwd / f"worker_{time.monotonic_ns()}.log").open("w")
    return subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def finish(worker: subprocess.Popen, timeout: int = 600) -> int:
    code = worker.wait(timeout=timeout)
    worker.stdout and worker.stdout.close()
    return code


def worker_logs(cwd: Path, tail: int | None = None) -> str:
    """Every worker's output, each cut to its last ``tail`` characters (an assertion message shows them all)."""
    return "\n".join(f"--- {p.name}\n{p.read_text()[-(tail or 0) :]}" for p in sorted(cwd.glob("worker_*.log")))


def summary_jobs(sweep: Path) -> set[str]:
    with (sweep / "summary.csv").open() as f:
        return {row["job"] for row in csv.DictReader(f)}


def check_values(study: optuna.Study) -> None:
    """Every finished trial's value is what its job wrote, wherever (whichever worker) it ran."""
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        job = Path(trial.user_attrs["job_dir"])
        assert job.name == str(trial.number)
        metrics = json.loads((job / "metrics.json").read_text())
        assert trial.value == metrics["val/acc_best"]


@pytest.fixture(params=["postgresql", "journal"])
def shared_storage(request, tmp_path):
    if request.param == "postgresql":
        return request.getfixturevalue("postgres")
    return f"journal:{tmp_path / 'mnist.log'}"


@pytest.mark.process
def test_two_workers_share_one_study(shared_storage, tmp_path, datasets):
    args = [*SWEEP, f"hydra.sweeper.storage={shared_storage}"]
    workers = [start_worker(args, tmp_path, datasets) for _ in range(2)]  # started at once, same command
    codes = [finish(w) for w in workers]
    assert codes == [0, 0], worker_logs(tmp_path, tail=3000)

    study = optuna.load_study(study_name=STUDY, storage=open_storage(storage_address(shared_storage, tmp_path)))
    trials = study.get_trials()
    # the budget is the study's: two workers asking at the same moment may overshoot it by one
    assert N_TRIALS <= len(trials) <= N_TRIALS + 1
    assert [t.number for t in trials] == list(range(len(trials)))  # unique numbers, no trial lost
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    check_values(study)

    # each worker kept its own sweep folder; the folders' job numbers are the trials it ran, and its summary
    # covers exactly them
    sweeps = run_dirs(tmp_path, "multiruns")
    assert len(sweeps) == 2
    ran = {
        sweep: {Path(t.user_attrs["job_dir"]).name for t in trials if Path(t.user_attrs["job_dir"]).parent == sweep}
        for sweep in sweeps
    }
    assert all(ran.values()), ran  # both cooperated
    assert sorted(n for jobs in ran.values() for n in jobs) == sorted(str(t.number) for t in trials)
    for sweep, jobs in ran.items():
        assert summary_jobs(sweep) == jobs
        assert {p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()} == jobs

    # the report from the storage alone sees every trial of both workers
    out = tmp_path / "report"
    command = [sys.executable, "-m", "visiontrain.sweeps.report", shared_storage, STUDY, "--out", str(out)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with (out / "optuna" / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == [t.number for t in trials]
    assert [float(r["val/acc_best"]) for r in rows] == [t.value for t in trials]
    assert {r["job_dir"] for r in rows} == {t.user_attrs["job_dir"] for t in trials}
    best = study.best_trial
    assert f"#{best.number}, val/acc_best = {best.value}" in (out / "best.yaml").read_text().splitlines()[0]
    assert (out / "optuna" / "history.png").is_file()
    assert f"python train.py --config-dir {out} --config-name best" in result.stdout


@pytest.mark.process
def test_killed_worker_loses_nothing(postgres, tmp_path, datasets):
    args = [
        *SWEEP,
        f"hydra.sweeper.storage={postgres}",
        f"hydra.sweeper.study_name={STUDY}_kill",
        # stale after 3 s without a heartbeat (a cluster would keep the defaults: 60 s, grace 120 s)
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=3",
    ]
    kill = ["+callbacks.kill._target_=tests.interrupt.KillAtStep", "+callbacks.kill.step=3"]
    survivor = start_worker(args, tmp_path, datasets)
    victim = start_worker(args + kill, tmp_path, datasets)
    assert finish(victim) == -9  # SIGKILLed in its first trial: no handler ran
    restarted = start_worker(args, tmp_path, datasets)
    assert [finish(survivor), finish(restarted)] == [0, 0], worker_logs(tmp_path, tail=3000)

    study = optuna.load_study(study_name=f"{STUDY}_kill", storage=postgres)
    trials = study.get_trials()
    (failed,) = [t for t in trials if t.state != TrialState.COMPLETE]
    assert failed.state == TrialState.FAIL
    # queued again with the same parameters, and run to the end by one of the living workers
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
    assert retry.state == TrialState.COMPLETE and retry.params == failed.params
    assert Path(retry.user_attrs["job_dir"]).parent != Path(failed.user_attrs["job_dir"]).parent
    # the budget: N_TRIALS trials, the killed one counted once through its retry
    assert N_TRIALS <= len(trials) - 1 <= N_TRIALS + 1
    check_values(study)
    assert f"runs trial #{failed.number} again: its worker stopped" in worker_logs(tmp_path)


@pytest.mark.process
def test_workers_opening_an_empty_database_at_once_both_get_the_study(postgres):
    """Optuna creates its tables when a storage is first opened, and two workers doing so at the same moment
    collide in PostgreSQL's catalog (optuna#1092): both must still get the study (it failed 6 times in 8 here)."""
    import psycopg

    def open_study(url: str, barrier: threading.Barrier, opened: list) -> None:
        barrier.wait()
        storage = open_storage(storage_address(url, "."), heartbeat_interval=60)
        opened.append(optuna.create_study(study_name=STUDY, storage=storage, load_if_exists=True)._study_id)

    for attempt in range(4):
        with psycopg.connect(postgres, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE empty{attempt}")
        url = postgres.rsplit("/", 1)[0] + f"/empty{attempt}"
        barrier, opened = threading.Barrier(2), []
        workers = [threading.Thread(target=open_study, args=(url, barrier, opened)) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert len(opened) == 2 and opened[0] == opened[1], f"attempt {attempt}: {opened}"


def test_storage_specs(tmp_path):
    sweep = tmp_path / "sweep"
    assert storage_address(None, sweep) == f"sqlite:///{sweep.resolve() / 'optuna.db'}"
    # relative files are read from where the command started: every job finds the same file
    assert storage_address("journal:studies/a.log", sweep, cwd=tmp_path) == f"journal:{tmp_path / 'studies' / 'a.log'}"
    assert storage_address("sqlite:///a.db", sweep, cwd=tmp_path) == f"sqlite:///{tmp_path / 'a.db'}"
    assert storage_address("sqlite:////abs/a.db", sweep, cwd=tmp_path) == "sqlite:////abs/a.db"
    url = "postgresql://me:secret@db.example.org:5432/studies"
    assert storage_address(url, sweep) == url
    assert printable(url) == "postgresql://me:***@db.example.org:5432/studies"


@pytest.mark.process
def test_password_from_the_environment(postgres, tmp_path, monkeypatch):
    """The README's advice holds: a URL without its password opens the storage when libpq finds the password in
    PGPASSWORD or in a password file (~/.pgpass, or PGPASSFILE); without either, one sentence."""
    import psycopg

    with psycopg.connect(postgres, autocommit=True) as connection:
        connection.execute("CREATE ROLE guarded LOGIN PASSWORD 'w8ch-s3cret'")
        connection.execute("CREATE DATABASE guarded OWNER guarded")
    url = postgres.replace("visiontrain@", "guarded@").replace("/sweeps", "/guarded")
    host_port = url.split("@")[1].split("/")[0]
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "absent"))
    with pytest.raises(StorageUnavailable, match=r"guarded@127\.0\.0\.1.*cannot be opened \(.*password"):
        open_storage(url)

    monkeypatch.setenv("PGPASSWORD", "w8ch-s3cret")
    optuna.create_study(storage=open_storage(url), study_name="from-env")
    monkeypatch.delenv("PGPASSWORD")

    passfile = tmp_path / "pgpass"
    passfile.write_text(f"{host_port}:guarded:guarded:w8ch-s3cret\n")
    passfile.chmod(0o600)  # libpq ignores a password file others can read
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    storage = open_storage(url)
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["from-env"]

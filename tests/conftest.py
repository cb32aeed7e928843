"""Shared fixtures: small datasets in real formats, config composition, CLI runs."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import runpy
import shutil
import signal
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from tests import formats
from visiontrain.runs import run_lock
from visiontrain.runs.config import compose_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# keep tests quiet and light: no rich widgets, one thread is plenty for tiny tensors
QUIET = ["extras.print_config=false", "callbacks.progress_bar=null", "callbacks.model_summary=null"]


# the quick tier (`make test`) leaves these out; `make test-all` (CI) runs everything
FULL_TIER_MARKERS = ("slow", "process", "real_data")
# a quick-tier test over this many seconds is named at the end of every run (a warning, never a failure)
QUICK_TEST_SECONDS = 10.0
_slow_quick_tests: list[tuple[float, str]] = []


def pytest_configure(config) -> None:
    # under pytest-xdist (`make test`: -n 2) each worker keeps to one core's worth of threads
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


def pytest_runtest_logreport(report) -> None:
    in_quick_tier = not any(marker in report.keywords for marker in FULL_TIER_MARKERS)
    if report.when == "call" and in_quick_tier and report.duration > QUICK_TEST_SECONDS:
        _slow_quick_tests.append((report.duration, report.nodeid))


def pytest_terminal_summary(terminalreporter) -> None:
    if _slow_quick_tests:
        terminalreporter.section(f"quick-tier tests over {QUICK_TEST_SECONDS:.0f} s (make them faster, or mark them)")
        for seconds, nodeid in sorted(_slow_quick_tests, reverse=True):
            terminalreporter.write_line(f"warning: {seconds:.1f} s {nodeid}")


@pytest.fixture(scope="session", autouse=True)
def own_cache_folder(tmp_path_factory) -> None:
    """What runs remember between starts (e.g. the masks already checked) goes to a folder of the test session's,
    not the user's ~/.cache; subprocesses inherit it."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session")
def datasets(tmp_path_factory) -> Path:
    """One folder holding every synthetic dataset, laid out as DATA_DIR would be."""
    root = tmp_path_factory.mktemp("data")
    formats.write_mnist(root)
    formats.write_cifar_archive(root)
    formats.write_cifar_png(root / "cifar10_png")
    formats.write_imagefolder(root / "folders")
    return root


@pytest.fixture(scope="session")
def trained_classifier(tmp_path_factory, datasets) -> Path:
    """One finished simple_cnn run on the synthetic digits (1 epoch), trained once per test session: tests that
    evaluate, predict, export or resume a classifier start from its folder (copied where a test writes into it)."""
    run = tmp_path_factory.mktemp("trained_classifier") / "run"
    args = ["logger=csv", *QUIET, "data.val_size=100", "data.batch_size=64", "model.net.width=8",
            "trainer.max_epochs=1", f"hydra.run.dir={run}"]  # fmt: skip
    result = run_cli("train.py", args, cwd=run.parent, data_dir=datasets)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


@pytest.fixture
def copied_classifier(trained_classifier, tmp_path) -> Path:
    """A copy of ``trained_classifier``'s run folder this test may write into."""
    return Path(shutil.copytree(trained_classifier, tmp_path / "trained_run"))


@pytest.fixture
def make_config(tmp_path, datasets):
    """``make_config("train", ["model=resnet", ...])`` -> a composed config writing into tmp_path/run."""

    def make(config_name: str = "train", overrides: list[str] | None = None, quiet: bool = True) -> DictConfig:
        base = [f"paths.data_dir={datasets}"]
        if config_name in ("train", "eval"):
            base += ["logger=tensorboard", "trainer.accelerator=cpu"]
        quiet_overrides = (QUIET if config_name == "train" else QUIET[:1]) if quiet else []
        return compose_config(config_name, base + quiet_overrides + list(overrides or []), tmp_path / "run")

    return make


@dataclasses.dataclass
class CommandResult:
    """What a command left behind, in the shape of ``subprocess.CompletedProcess``."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_cli(script: str, args: list[str], cwd: Path, data_dir: Path | None = None, timeout: int = 300):
    """Run ``python <script> args`` in this process, as a user would from ``cwd`` (so outputs/ lands there): the
    script runs as ``__main__`` with its own argv, its output is captured, its exit status kept. What the command
    changes in the process (Hydra's global state, logging, environment, working folder, threads, signal handlers,
    warning filters) is put back afterwards (``process_state_restored``). Use ``run_process`` where the process
    itself is the point (signals, kills, several processes at once, DDP)."""
    del timeout  # kept for the call sites' symmetry with run_process
    if any("tests.interrupt.Kill" in arg for arg in args):
        raise ValueError("a run that kills its own process needs run_process, not run_cli")
    stdout, stderr = io.StringIO(), io.StringIO()
    returncode = 0
    with process_state_restored(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        os.environ.update({"PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"})
        if data_dir is not None:
            os.environ["DATA_DIR"] = str(data_dir)
        os.chdir(cwd)
        sys.argv = [str(PROJECT_ROOT / script), *args]
        # what the interpreter would put on sys.path: the script's folder, then PYTHONPATH (relative to cwd)
        extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:0] = [str(PROJECT_ROOT), *(str(Path(cwd, p).resolve()) for p in extra)]
        try:
            runpy.run_path(str(PROJECT_ROOT / script), run_name="__main__")
        except SystemExit as exit_:
            returncode = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if isinstance(exit_.code, str):  # what the interpreter prints for SystemExit("...")
                print(exit_.code, file=sys.stderr)
        except BaseException:  # what an uncaught exception does to a process: its traceback, status 1
            traceback.print_exc(file=sys.stderr)
            returncode = 1
        interpreter_exit()
    return CommandResult([script, *args], returncode, stdout.getvalue(), stderr.getvalue())


def interpreter_exit() -> None:
    """What the interpreter's exit does for a command (its atexit handlers): run folders given back, an open W&B
    run finished (it prints its "wandb sync" line then)."""
    run_lock.release_all()
    if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
        sys.modules["wandb"].finish()


@contextlib.contextmanager
def process_state_restored():
    """Everything a command run in-process changes about the process, as it was before."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    environ, cwd, argv, path = dict(os.environ), os.getcwd(), list(sys.argv), list(sys.path)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)}
    loggers = {name: _logger_state(logging.getLogger(name)) for name in [None, *logging.root.manager.loggerDict]}
    try:
        with warnings.catch_warnings():
            yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        for name in [None, *logging.root.manager.loggerDict]:
            logger = logging.getLogger(name)
            if isinstance(logger, logging.Logger):
                state = loggers.get(name, _logger_state(None))  # a logger the command created: as if new
                for handler in set(logger.handlers) - set(state[0]):
                    handler.close()
                _restore_logger(logger, state)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        os.chdir(cwd)
        sys.argv, sys.path[:] = argv, path
        os.environ.clear()
        os.environ.update(environ)


def _logger_state(logger) -> tuple:
    if not isinstance(logger, logging.Logger):
        return ((), logging.NOTSET, True, False)
    return (tuple(logger.handlers), logger.level, logger.propagate, logger.disabled)


def _restore_logger(logger: logging.Logger, state: tuple) -> None:
    handlers, level, propagate, disabled = state
    logger.handlers[:] = list(handlers)
    logger.setLevel(level)
    logger.propagate, logger.disabled = propagate, disabled


def run_process(script: str, args: list[str], cwd: Path, data_dir: Path | None = None, timeout: int = 300):
    """Run ``python <script> args`` as a fresh process, as a user would, from ``cwd`` (so outputs/ lands there)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HYDRA_FULL_ERROR": "0"}
    if data_dir is not None:
        env["DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )

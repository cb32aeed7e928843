"""Where an Optuna study lives (``hydra.sweeper.storage``), opened the same way by the sweeper, by a trial's pruning
callback and by ``python -m visiontrain.sweeps.report``.

- ``null``: ``sqlite:///<sweep dir>/optuna.db``, the study lives (and resumes) with the sweep's folders.
- An SQLAlchemy URL (``postgresql://user@host/db``, ``mysql+pymysql://...``, ``sqlite:///path.db``): Optuna's
  RDB storage, shared by every worker that names the same study. Workers send a heartbeat for each trial they
  run; a trial whose heartbeat stops (its worker was killed or lost its node) is marked failed by the next worker
  that asks for a trial, and queued again with the same parameters (Optuna's RetryHeartbeatStaleTrialCallback).
- ``journal:<file>``: Optuna's journal file storage, no database server (a file on a shared file system). It has
  no heartbeat: a killed worker's running trial is continued when that worker is started again with
  ``resume=<its sweep dir>``.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

JOURNAL = "journal:"
# the trial attribute a job's pruning callback sets (the epoch it stopped at), which the sweeper reads back
PRUNED_AT = "pruned_at_epoch"
# the study's name when hydra.sweeper.study_name is null
DEFAULT_STUDY_NAME = "sweep"


class StorageUnavailable(Exception):
    """The study's storage cannot be opened; the message is one sentence naming it (password masked)."""


def without_passwords(config: Any) -> Any:
    """A copy of a config for writing to disk (the sweep's multirun.yaml, a job's .hydra/hydra.yaml) with the
    storage URL's password masked, in ``sweeper.storage`` and in the command line's Hydra overrides; the jobs read
    the real URL from memory. ``config`` is a whole config (with ``hydra``) or a Hydra config."""
    from omegaconf import OmegaConf

    masked = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
    hydra = masked.hydra if "hydra" in masked else masked
    storage = OmegaConf.select(hydra, "sweeper.storage", default=None)
    if isinstance(storage, str):
        hydra.sweeper.storage = printable(storage)
    overrides = OmegaConf.select(hydra, "overrides.hydra", default=None) or []
    for i, override in enumerate(overrides):
        name, sep, value = str(override).partition("=")
        if sep and name.lstrip("+~") == "hydra.sweeper.storage":
            overrides[i] = f"{name}={printable(value)}"
    return masked


def storage_address(storage: str | None, sweep_dir: str | Path, cwd: str | Path | None = None) -> str:
    """The storage as an absolute address: the sweep folder's SQLite file when none is given, and a relative journal
    or SQLite path read from ``cwd`` (where the command was started), so that jobs find the same file."""
    if not storage:
        return f"sqlite:///{Path(sweep_dir).resolve() / 'optuna.db'}"
    storage = str(storage)
    base = Path(cwd or ".")
    if storage.startswith(JOURNAL):
        return JOURNAL + str((base / storage[len(JOURNAL) :]).resolve())
    if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
        path = storage[len("sqlite:///") :]
        if path and path != ":memory:":
            return "sqlite:///" + str((base / path).resolve())
    return storage


def open_storage(
    address: str, heartbeat_interval: int | None = None, grace_period: int | None = None, max_retry: int | None = None
) -> BaseStorage:
    """An Optuna storage from an absolute address (see :func:`storage_address`).

    ``heartbeat_interval`` (seconds, RDB storages only): trials run under this storage record a heartbeat this
    often; one silent for ``grace_period`` (default: twice the interval) is failed and retried at most
    ``max_retry`` times (null: always).
    """
    if address.startswith(JOURNAL):
        path = Path(address[len(JOURNAL) :])
        if not path.parent.is_dir():
            raise StorageUnavailable(f"hydra.sweeper.storage={address}: the folder {path.parent} does not exist.")
        return JournalStorage(JournalFileBackend(str(path)))
    url = address
    if url.startswith("postgresql://"):  # the driver installed with visiontrain[postgres], whichever SQLAlchemy's
        url = "postgresql+psycopg://" + url[len("postgresql://") :]  # default is (psycopg2 before 2.1)
    from sqlalchemy.exc import OperationalError

    try:
        return _open_rdb(url, heartbeat_interval, grace_period, max_retry)
    except OperationalError as err:  # no server there, refused, wrong password: the driver's first line says which
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise StorageUnavailable(
            f"hydra.sweeper.storage={printable(address)}: the database cannot be opened ({reason})."
        ) from None


def _open_rdb(address: str, heartbeat_interval: int | None, grace_period: int | None, max_retry: int | None):
    if not heartbeat_interval:
        return _opened_while_others_create_tables(lambda: optuna.storages.get_storage(address))
    return _opened_while_others_create_tables(
        lambda: RDBStorage(
            address,
            # a database server restarted between two trials of a long sweep leaves dead connections in the pool
            engine_kwargs={"pool_pre_ping": True} if not address.startswith("sqlite") else None,
            heartbeat_interval=int(heartbeat_interval),
            grace_period=int(grace_period) if grace_period else None,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
        )
    )


def _opened_while_others_create_tables(open_rdb: Callable[[], BaseStorage], attempts: int = 5) -> BaseStorage:
    """Optuna creates its tables when a database storage is first opened, and workers started together on an
    empty database collide there (optuna#1092: "duplicate key value violates unique constraint
    pg_type_typname_nsp_index", "table alembic_version already exists"); Optuna leaves it to the user. The
    creation checks what exists first and the loser's transaction is rolled back, so opening again finds the
    winner's tables."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts - 1):
        try:
            return open_rdb()
        except (IntegrityError, ProgrammingError, OperationalError):
            time.sleep(0.2 * (attempt + 1) + 0.2 * random.random())  # apart, so that they do not collide again
    return open_rdb()


def printable(address: str) -> str:
    """The storage for a log line: a database URL without its password."""
    if address.startswith(JOURNAL) or "://" not in address or "${" in address:
        return address
    from sqlalchemy.engine import make_url

    try:
        return make_url(address).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: mask what looks like user:password@
        return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", address)


def has_heartbeat(storage: BaseStorage) -> bool:
    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None

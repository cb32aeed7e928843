"""Callbacks that look at a run from the inside, given to it from the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lightning import Callback


def listening_addresses(port: int) -> list[str]:
    """The local addresses (hex, as the kernel lists them) of the TCP sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).is_file():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.append(local.rsplit(":", 1)[0])
    return found


class StoreAddresses(Callback):
    """On rank zero, write where the DDP rendezvous store (MASTER_PORT) listens into ``<file>``."""

    def __init__(self, file: str) -> None:
        self.file = file

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            port = int(os.environ["MASTER_PORT"])
            Path(self.file).write_text(json.dumps({"port": port, "addresses": listening_addresses(port)}))

"""Checkpoint files that are either complete or absent, never half-written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from fsspec.utils import get_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

# read once: os.umask can only be read by setting it
_UMASK = os.umask(0)
os.umask(_UMASK)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a local checkpoint to a temporary file in its own folder, flush it to disk, then rename it into place.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in the system temp
    folder: when that is another filesystem (a node-local /tmp, the run on NFS or Lustre) the final "rename"
    is a copy, which a kill or a full disk can leave half done, and /tmp must hold the whole checkpoint.
    A rename within one folder (``os.replace``) is atomic on POSIX, so ``last.ckpt`` is always the previous
    complete checkpoint or the new complete one. Remote paths (s3://, gs://, ...) keep Lightning's path.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or get_protocol(str(path)) != "file":
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes it owner-only
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

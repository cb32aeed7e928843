"""Split manifests: what each split of a run held, stored once per version of the data and summarised in every run
folder (``<run dir>/splits.json``) and checkpoint, so that a later eval or predict can tell whether it is looking at
the same images.

The full manifest (every file's path, size and hash) is content-addressed: ``<cache>/manifests/<hash>.json``, named
by the BLAKE2b-128 hash of its own bytes, written by the first run that sees this version of the data and shared by
every later run and every trial of a sweep. The run folder's ``splits.json`` keeps that hash and the per-split summary
(counts, digests, duplicates); ``load`` gives back the full manifest from either.

A datamodule says what its splits hold (``SplitDataModule.split_contents``): the image file of each sample (and the
files holding the labels: masks, annotation files, split lists), or, for data read into memory from array files
(MNIST's IDX files, CIFAR-10's python batches), the decoded images themselves and the files they came from. Every
file is listed with its path relative to ``root`` (the folder holding them all), its size and a BLAKE2b-128 hash of
its bytes; an in-memory image with a name (``train#12``: image 12 of the official training split), its size and the
hash of its pixels.

Hashing reads every byte once; the hashes are remembered by (path, size, modification time) in
``<cache>/hashes/`` (the decoded-image cache's folder where the data has one, else ``$XDG_CACHE_HOME/visiontrain``),
so a second start only looks at the files' sizes and times.

Exact duplicates (the same hash twice) within a split and across splits are counted and named in one warning: an
image in the training split and in val or test makes those figures optimistic.

The checkpoint's summary (``summary``) holds, per split, the count, a digest of the sorted hashes (the same images,
wherever they are stored and however named), a digest of the labels, and the first 64 bits of each hash (8 bytes an
image) so that eval.py can count how many of the images it tests were in the checkpoint's splits, and predict.py
which of its inputs were.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visiontrain.errors import UserError

log = logging.getLogger(__name__)

FORMAT = 1  # the full manifest
RUN_FORMAT = 2  # the run folder's splits.json: the full manifest's hash and the summary
HASH = "blake2b-128"
FILE_NAME = "splits.json"
SPLITS = ("train", "val", "test")
SPLIT_WORDS = {"train": "training split", "val": "validation split", "test": "test split"}


@dataclass(frozen=True)
class SplitContent:
    """What one split holds: one sample per entry of ``files`` or, for in-memory data, of ``images``."""

    files: Sequence[Path] = ()  # the image file of each sample
    images: torch.Tensor | None = None  # in-memory data: the uint8 images (N, ...) instead of files
    names: Sequence[str] = ()  # with images: what to call each one in messages ("train#12")
    sources: Sequence[Path] = ()  # with images: the array files they were read from
    labels: Sequence[str] | None = None  # classification: each sample's class
    label_files: Sequence[Path] = ()  # what labels the samples: masks, annotation files, split lists

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.files)


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/visiontrain`` (``~/.cache``): where runs keep what they remember between starts, as data
    folders are often read-only."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "visiontrain"


def content_hash(data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_hash(path: str | Path) -> str:
    """The BLAKE2b-128 hash of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while piece := f.read(1 << 20):
                digest.update(piece)
    except OSError as err:
        raise UserError(f"cannot read {path} to hash it for the split manifest ({err.strerror or err}).") from err
    return digest.hexdigest()


class HashCache:
    """File hashes remembered by (path, size, modification time), one JSON file per data folder (``root``)."""

    def __init__(self, directory: Path, root: Path) -> None:
        key = hashlib.sha1(str(root).encode()).hexdigest()[:20]
        self.path = Path(directory).expanduser() / "hashes" / f"{key}.json"
        try:
            self.entries: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.read = 0  # files hashed by the last ``hashes`` call (the rest were remembered)

    def hashes(self, files: Sequence[str]) -> list[tuple[int, str]]:
        """``(size, hash)`` of each file: remembered ones as they are, the others read and hashed."""
        found: list[tuple[int, str] | None] = []
        stale: list[int] = []
        for n, path in enumerate(files):
            try:
                stat = os.stat(path)
            except OSError as err:
                raise UserError(f"cannot read {path} for the split manifest ({err.strerror or err}).") from err
            entry = self.entries.get(path)
            if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
                found.append((entry[0], entry[2]))
            else:
                found.append(None)
                stale.append(n)
                self.entries[path] = [stat.st_size, stat.st_mtime_ns, ""]
        if stale:  # reading and hashing release the GIL: threads overlap the reads
            with ThreadPoolExecutor(max_workers=8) as pool:
                for n, digest in zip(stale, pool.map(file_hash, [files[n] for n in stale])):
                    self.entries[files[n]][2] = digest
                    found[n] = (self.entries[files[n]][0], digest)
            self.save()
        self.read = len(stale)
        return found  # type: ignore[return-value]

    def save(self) -> None:
        with contextlib.suppress(OSError):  # a read-only cache costs the next start time, not this run
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(self.entries, separators=(",", ":")))
            os.replace(temporary, self.path)


def common_root(paths: Sequence[str]) -> Path:
    return Path(os.path.commonpath(list({os.path.dirname(p) for p in paths}))) if paths else Path()


def absolute_path(path: str | Path) -> str:
    text = os.fspath(path)
    return text if os.path.isabs(text) else os.path.abspath(text)


def hash_files(paths: Sequence[str | Path], cache_dir: Path | None = None) -> tuple[list[tuple[int, str]], Path, int]:
    """``(size, hash)`` of each file through the hash cache, the folder holding them all, and how many were read."""
    names = [absolute_path(p) for p in paths]
    root = common_root(names)
    cache = HashCache(cache_dir or user_cache_dir(), root)
    return cache.hashes(names), root, cache.read


def digest(lines: Sequence[str]) -> str:
    return content_hash("\n".join(sorted(lines)).encode())


def short_hashes(hashes: Sequence[str]) -> torch.Tensor:
    """The first 64 bits of each hash as sorted int64: 8 bytes an image in a checkpoint, enough to tell images apart."""
    values = np.array([int(h[:16], 16) for h in hashes], dtype=np.uint64).view(np.int64)
    return torch.from_numpy(np.sort(values))


def build(contents: Mapping[str, SplitContent], dataset: str, cache_dir: Path | None = None) -> dict[str, Any]:
    """The manifest of ``contents`` (split -> what it holds) as the plain data ``splits.json`` holds."""
    start = time.perf_counter()
    # paths as absolute strings, made once: with tens of thousands of files, path arithmetic is most of a cached start
    absolute = {
        split: [absolute_path(p) for p in (*content.files, *content.label_files, *content.sources)]
        for split, content in contents.items()
    }
    every_file = list(dict.fromkeys(p for paths in absolute.values() for p in paths))
    known, root, read = hash_files(every_file, cache_dir)
    size_hash = dict(zip(every_file, known))
    cut = len(os.path.join(str(root), ""))  # every file lies below root: its relative path is what follows

    def listed(paths: Sequence[str]) -> list[dict[str, Any]]:
        return [{"path": full[cut:], "size": size_hash[full][0], "hash": size_hash[full][1]} for full in paths]

    splits: dict[str, Any] = {}
    for split, content in contents.items():
        if content.images is not None:
            rows = content.images.reshape(len(content.images), -1).contiguous().numpy()
            samples = [
                {"name": name, "size": int(row.nbytes), "hash": content_hash(memoryview(row))}
                for name, row in zip(content.names, rows)
            ]
        else:
            samples = listed(absolute[split][: len(content.files)])
        if content.labels is not None:
            for sample, label in zip(samples, content.labels):
                sample["label"] = str(label)
        n_files, n_labels = len(content.files), len(content.label_files)
        label_files = listed(absolute[split][n_files : n_files + n_labels])
        hashes = [s["hash"] for s in samples]
        # the labels: each sample's class with its image, and the label files' contents
        label_lines = [f"{s['hash']} {s.get('label', '')}" for s in samples] + [f["hash"] for f in label_files]
        splits[split] = {
            "count": len(samples),
            "digest": digest(hashes),
            "labels_digest": digest(label_lines),
            "samples": samples,
            "label_files": label_files,
            "sources": listed(absolute[split][n_files + n_labels :]),
        }
    manifest = {
        "format": FORMAT,
        "dataset": dataset,
        "root": str(root),
        "hash": HASH,
        "splits": splits,
        "duplicates": duplicates(splits),
    }
    count = sum(s["count"] for s in splits.values())
    log.info(
        "split manifest of %s: %s images; %d files hashed, %d remembered from before (%.1f s)",
        dataset,
        " / ".join(f"{s['count']} {split}" for split, s in splits.items()),
        read,
        len(every_file) - read,
        time.perf_counter() - start,
        extra={"console": False} if not read and count else {},
    )
    return manifest


def sample_name(sample: Mapping[str, Any]) -> str:
    return sample.get("path") or sample["name"]


def duplicates(splits: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Exact duplicates: ``within`` (split -> copies beyond the first), ``across`` ("train+test" -> images in both)
    and ``examples`` (a few groups of the names holding one image, those across splits first)."""
    counts = Counter(sample["hash"] for entry in splits.values() for sample in entry["samples"])
    repeated = {digest_ for digest_, n in counts.items() if n > 1}
    holders: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for split, entry in splits.items():
        for sample in entry["samples"]:
            if sample["hash"] in repeated:
                holders[sample["hash"]].append((split, sample_name(sample)))
    within: dict[str, int] = {}
    across: dict[str, int] = {}
    groups = []
    for found in holders.values():
        in_splits = [split for split in splits if any(s == split for s, _ in found)]
        for split in in_splits:
            copies = sum(s == split for s, _ in found) - 1
            if copies:
                within[split] = within.get(split, 0) + copies
        for i, first in enumerate(in_splits):
            for second in in_splits[i + 1 :]:
                across[f"{first}+{second}"] = across.get(f"{first}+{second}", 0) + 1
        groups.append((len(in_splits) < 2, [name for _, name in found]))
    examples = [names for _, names in sorted(groups, key=lambda group: group[0])[:20]]
    return {"within": within, "across": across, "examples": examples}


def duplicate_warning(manifest: Mapping[str, Any]) -> str | None:
    """One sentence counting the manifest's exact duplicates and naming a few; None when there are none."""
    found = manifest["duplicates"]
    if not found["within"] and not found["across"]:
        return None
    parts = [f"{n} extra cop{'y' if n == 1 else 'ies'} within {split}" for split, n in found["within"].items()]
    parts += [
        f"{n} image{'' if n == 1 else 's'} in both {pair.replace('+', ' and ')}" for pair, n in found["across"].items()
    ]
    shown = "; ".join(" = ".join(names[:3]) + (" ..." if len(names) > 3 else "") for names in found["examples"][:3])
    advice = (
        ": an image in the training split and in val or test makes those figures optimistic"
        if any(pair.startswith("train+") for pair in found["across"])
        else ""
    )
    return f"{manifest['dataset']} holds exact duplicate images: {', '.join(parts)} (e.g. {shown}){advice}."


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file and rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def store(manifest: Mapping[str, Any], cache_dir: Path | None = None) -> tuple[str, Path]:
    """The full manifest in ``<cache>/manifests/<hash>.json`` (written once: the same data, the same file);
    returns its hash and path."""
    text = json.dumps(manifest, separators=(",", ":"))
    name = content_hash(text.encode())
    path = Path(cache_dir or user_cache_dir()).expanduser() / "manifests" / f"{name}.json"
    if not path.is_file():
        write_atomic(path, text)
    return name, path


def write(manifest: Mapping[str, Any], run_dir: str | Path, cache_dir: Path | None = None) -> Path:
    """``<run_dir>/splits.json``: the stored manifest's hash and where it is, the per-split counts and digests and the
    duplicates. Where the cache cannot be written, the full manifest goes into the run folder instead."""
    path = Path(run_dir) / FILE_NAME
    try:
        name, stored = store(manifest, cache_dir)
    except OSError as err:
        log.warning(
            "cannot store the split manifest in %s (%s): writing all of it into %s",
            cache_dir or user_cache_dir(),
            err.strerror or err,
            path,
        )
        write_atomic(path, json.dumps(manifest, separators=(",", ":")))
        return path
    splits = {
        split: {key: entry[key] for key in ("count", "digest", "labels_digest")}
        for split, entry in manifest["splits"].items()
    }
    brief = {
        "format": RUN_FORMAT,
        "dataset": manifest["dataset"],
        "root": manifest["root"],
        "manifest": {"hash": name, "path": str(stored)},
        "splits": splits,
        "duplicates": manifest["duplicates"],
    }
    write_atomic(path, json.dumps(brief, indent=1))
    return path


def load(run_dir: str | Path) -> dict[str, Any]:
    """The full manifest of a run: from the store ``splits.json`` names (checked against its hash), or
    ``splits.json`` itself when it holds all of it (older runs, or a cache that could not be written)."""
    path = Path(run_dir) / FILE_NAME
    try:
        written = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the split manifest {path} ({getattr(err, 'strerror', None) or err}).") from err
    if written.get("format") != RUN_FORMAT:
        return written
    stored = Path(written["manifest"]["path"])
    try:
        text = stored.read_text()
    except OSError as err:
        raise UserError(
            f"{path} names the split manifest {stored}, which cannot be read ({err.strerror or err}): "
            "a run of the same data writes it again."
        ) from err
    if content_hash(text.encode()) != written["manifest"]["hash"]:
        raise UserError(f"{stored} does not hold the split manifest {path} names: its content has changed.")
    return json.loads(text)


def summary(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What a checkpoint keeps of the manifest, per split: ``count``, ``digest``, ``labels_digest`` and ``hashes``
    (the short hashes, ``short_hashes``). Plain values and a tensor: checkpoints load with ``weights_only=True``."""
    return {
        split: {
            "count": entry["count"],
            "digest": entry["digest"],
            "labels_digest": entry["labels_digest"],
            "hashes": short_hashes([s["hash"] for s in entry["samples"]]),
        }
        for split, entry in manifest["splits"].items()
    }


def record(datamodule: Any, run_dir: str | Path) -> dict[str, dict[str, Any]] | None:
    """Build the manifest of a set-up datamodule, store it and summarise it in ``run_dir``, warn about duplicates;
    returns the checkpoint's summary (None: the datamodule lists nothing)."""
    contents = datamodule.split_contents()
    if not contents:
        return None
    manifest = build(contents, datamodule.name, datamodule.hash_cache_dir())
    write(manifest, run_dir, datamodule.hash_cache_dir())
    warning = duplicate_warning(manifest)
    if warning:
        log.warning(warning)
    return summary(manifest)


# --- comparing with a checkpoint's splits ---------------------------------------------------------------------------
def overlaps(hashes: torch.Tensor, stored: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """For each stored split, how many of ``hashes`` (short hashes, any order) are among its images."""
    values = hashes.numpy()
    return {
        split: int(np.isin(values, entry["hashes"].numpy()).sum())
        for split, entry in stored.items()
        if isinstance(entry.get("hashes"), torch.Tensor)
    }


def compare(split: str, evaluated: Mapping[str, Any], stored: Mapping[str, Mapping[str, Any]]) -> tuple[bool, str]:
    """``(differs, sentence)``: whether the split ``evaluated`` (its ``summary`` entry) is the one the checkpoint
    was tested on (its test split; its validation split when it had none), and how many of its images were in each
    of the checkpoint's splits."""
    reference = "test" if "test" in stored else "val"
    theirs = stored[reference]
    word = SPLIT_WORDS[reference]
    if evaluated["digest"] == theirs["digest"]:
        if evaluated["labels_digest"] != theirs["labels_digest"]:
            return True, (
                f"the {split} split evaluated here holds the {evaluated['count']} images of the checkpoint's {word}, "
                "but their labels differ from those it was evaluated with."
            )
        return False, f"the {split} split evaluated here is the checkpoint's {word} ({evaluated['count']} images)."
    found = overlaps(evaluated["hashes"], stored)
    counts = [f"{found[s]} in its {SPLIT_WORDS[s]}" for s in (reference, "val", "train", "test") if s in found]
    counts = list(dict.fromkeys(counts))  # the reference split first
    counts[0] = counts[0].replace(" in ", " were in ", 1)
    listed = ", ".join(counts[:-1]) + f" and {counts[-1]}" if len(counts) > 1 else counts[0]
    sentence = (
        f"the {split} split evaluated here ({evaluated['count']} images) differs from the checkpoint's {word} "
        f"({theirs['count']} images): of these, {listed}"
    )
    if found.get("train"):
        sentence += "; figures on images the model trained on are optimistic"
    return True, sentence + "."


def input_overlap(files: Sequence[str | Path], stored: Mapping[str, Mapping[str, Any]]) -> str | None:
    """predict.py: a sentence saying which input files hold images of the checkpoint's splits; None if none do."""
    if not files or not stored:
        return None
    known, _, _ = hash_files(files)
    own = torch.from_numpy(np.array([int(h[:16], 16) for _, h in known], dtype=np.uint64).view(np.int64))
    parts = []
    for split in SPLITS:
        entry = stored.get(split)
        if entry is None or not isinstance(entry.get("hashes"), torch.Tensor):
            continue
        inside = np.isin(own.numpy(), entry["hashes"].numpy())
        hits = [Path(f).name for f, hit in zip(files, inside) if hit]
        if hits:
            shown = ", ".join(hits[:3]) + (", ..." if len(hits) > 3 else "")
            parts.append((split, len(hits), shown))
    if not parts:
        return None
    texts = [f"{n} in its {SPLIT_WORDS[split]} ({shown})" for split, n, shown in parts]
    first, n = SPLIT_WORDS[parts[0][0]], parts[0][1]
    texts[0] = f"{n} {'was' if n == 1 else 'were'} in the checkpoint's {first} ({parts[0][2]})"
    sentence = f"of the {len(files)} input images, {'; '.join(texts)}"
    if any(split == "train" for split, _, _ in parts):
        sentence += ": predictions on images the model trained on say little about new images"
    return sentence + "."

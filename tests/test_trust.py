"""Files from elsewhere are data, never code (issue #26): a checkpoint whose stored config names anything but our
model, data, optimizer and schedule builders is refused in one sentence, before any object is built, by every
command that reads one; CIFAR-10's python batches are read without running what they carry."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import QUIET, run_cli
from visiontrain import artifact
from visiontrain.errors import UserError


class WritesMarker:
    """A pickle that creates a file when it is loaded: the proof that code from a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def torch_load_gadget(marker: Path) -> dict:
    """The tester's gadget: torch.load(weights_only=False) over bytes built from the config itself."""
    buffer = io.BytesIO()
    torch.save(WritesMarker(marker), buffer, _use_new_zipfile_serialization=False)
    payload = list(buffer.getvalue())
    data = {"_target_": "builtins.bytes", "_args_": [payload]}
    return {"_target_": "torch.load", "f": {"_target_": "io.BytesIO", "initial_bytes": data}, "weights_only": False}


def variants(marker: Path) -> dict[str, callable]:
    """Ways to smuggle the gadget into a checkpoint's configs: each edits the stored configs in place."""

    def top(configs):
        configs["model_resolved"] = torch_load_gadget(marker)

    def nested_net(configs):
        configs["model_resolved"]["net"] = torch_load_gadget(marker)

    def partial(configs):
        configs["model_resolved"]["net"] = {**torch_load_gadget(marker), "_partial_": True}

    def in_a_list(configs):
        configs["model"]["net"]["layers"] = [1, torch_load_gadget(marker)]

    def positional_args(configs):
        configs["model_resolved"]["net"]["_args_"] = [torch_load_gadget(marker)]

    def data_config(configs):
        configs["data"] = torch_load_gadget(marker)

    def resolver(configs):  # oc.create would turn this string into a config with a _target_ after any check
        configs["model"]["net"]["width"] = "${oc.create:{_target_: torch.load, f: x}}"

    def our_module_but_not_a_builder(configs):  # inside visiontrain, yet not a model, data or optimizer class
        configs["model_resolved"]["net"] = {"_target_": "visiontrain.data.manifest.build", "contents": {}}

    return {f.__name__: f for f in (top, nested_net, partial, in_a_list, positional_args, data_config, resolver,
                                    our_module_but_not_a_builder)}  # fmt: skip


def poisoned(ckpt: Path, out: Path, edit) -> Path:
    content = torch.load(ckpt, weights_only=True)
    edit(content[artifact.CONFIG_KEY])
    torch.save(content, out)
    return out


def test_the_gadget_runs_code_when_instantiated_so_refusing_it_matters(tmp_path):
    """The gadget is real: built by Hydra as it stands, it writes the marker (here, deliberately)."""
    from hydra.utils import instantiate

    marker = tmp_path / "marker"
    instantiate(torch_load_gadget(marker))
    assert marker.exists()


@pytest.mark.parametrize("variant", list(variants(Path("m"))))
@pytest.mark.parametrize("command", ["eval", "predict", "export", "init_from", "resume"])
def test_a_checkpoint_whose_config_would_build_anything_else_is_refused(
    command, variant, trained_classifier, make_config, tmp_path, datasets
):
    from visiontrain.cli.eval import evaluate
    from visiontrain.cli.export import export
    from visiontrain.cli.predict import predict
    from visiontrain.cli.train import train

    marker = tmp_path / "marker"
    run = Path(shutil.copytree(trained_classifier, tmp_path / "run"))
    for saved in (run / "checkpoints").glob("*.ckpt"):  # all of them: resume falls back to an older one
        ckpt = poisoned(saved, saved, variants(marker)[variant])
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), np.uint8)).save(images / "a.png")
    runs = {
        "eval": lambda: evaluate(make_config("eval", [f"ckpt_path={ckpt}"])),
        "predict": lambda: predict(make_config("predict", [f"ckpt_path={ckpt}", f"input={images}", "output=out"])),
        "export": lambda: export(make_config("export", [f"ckpt_path={ckpt}", f"output={tmp_path / 'm.onnx'}"])),
        "init_from": lambda: train(make_config("train", [f"init_from={ckpt}", "debug=fdr"])),
        "resume": lambda: run_cli("train.py", [f"resume={run}"], cwd=tmp_path, data_dir=datasets),
    }
    try:
        result = runs[command]()
    except UserError as err:
        message = str(err)
    else:  # the command line reports it as a one-sentence error
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        message = result.stderr
    assert "was refused" in message
    assert not marker.exists()


def test_one_sentence_names_the_key_and_how_to_trust_own_modules(trained_classifier, tmp_path, monkeypatch):
    ckpt = poisoned(trained_classifier / "checkpoints" / "last.ckpt", tmp_path / "c.ckpt", variants(tmp_path)["top"])
    with pytest.raises(UserError) as refused:
        artifact.load_checkpoint(ckpt)
    assert "model_resolved._target_='torch.load'" in str(refused.value)
    assert artifact.TRUST_ENV in str(refused.value) and "\n" not in str(refused.value)

    def own_module(configs):
        configs["model"]["net"]["_target_"] = "my_models.Net"

    mine = poisoned(trained_classifier / "checkpoints" / "last.ckpt", tmp_path / "mine.ckpt", own_module)
    with pytest.raises(UserError, match=r"model.net._target_='my_models.Net'"):
        artifact.load_checkpoint(mine)
    monkeypatch.setenv(artifact.TRUST_ENV, "my_models.")
    assert artifact.load_checkpoint(mine).info.configs["model"]["net"]["_target_"] == "my_models.Net"


def test_every_target_our_configs_write_is_allowed(trained_classifier):
    """The allow-list is not narrower than what training writes: every packaged model and data config passes."""
    from omegaconf import OmegaConf

    from visiontrain.runs.config import CONFIG_DIR

    for group in ("model", "data"):
        for path in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
            config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            for key in ("defaults",):
                config.pop(key, None)
            artifact.check_targets(config, str(path), group)
    artifact.load_checkpoint(trained_classifier / "checkpoints" / "last.ckpt")


def test_cifar_batches_are_read_without_running_their_pickles(tmp_path, make_config):
    """A crafted data_batch_1 is refused in one sentence naming it; the marker never appears."""
    from tests import formats
    from visiontrain.data.cifar10 import read_python_batch as read_batch

    root = formats.write_cifar_archive(tmp_path / "data")
    batch = next(root.rglob("data_batch_1"))
    images, labels = read_batch(batch)  # the real format still reads
    assert images.shape[1:] == (3, 32, 32) and len(labels) == len(images)

    marker = tmp_path / "marker"
    batch.write_bytes(pickle.dumps({"data": WritesMarker(marker), "labels": [0]}))
    with pytest.raises(UserError, match=rf"{batch} holds objects other than"):
        read_batch(batch)
    assert not marker.exists()
    buffer = io.BytesIO()
    pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, buffer, protocol=2)
    batch.write_bytes(buffer.getvalue())
    images, labels = read_batch(batch)  # numpy arrays inside the archive's own pickles are what it holds
    assert images.shape == (1, 3, 32, 32)


def test_train_refuses_a_crafted_cifar_batch_in_one_sentence(tmp_path):
    from tests import formats

    root = formats.write_cifar_archive(tmp_path / "data")
    marker = tmp_path / "marker"
    batch = next(root.rglob("data_batch_1"))
    batch.write_bytes(pickle.dumps({"data": WritesMarker(marker), "labels": [0]}))
    result = run_cli("train.py", [*QUIET, "data=cifar10", "data.download=false", "debug=fdr"], tmp_path, root)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"error: {batch} holds objects other than" in result.stderr
    assert not marker.exists()

"""What was taken out of a training step's cost changed no value: the lean training metrics give torchmetrics' values,
the class map is argmax's, the finite-loss check stops at the same step, callbacks skip only empty hooks, the
progress bar redraws every refresh_rate batches, and a short default run logs the losses it logged before."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning import Callback
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from visiontrain.callbacks.finite_loss import StopOnNonFiniteLoss
from visiontrain.compat import PER_BATCH_HOOKS, batch_hooks_only_where_used
from visiontrain.errors import TrainingDiverged
from visiontrain.tasks.running import RunningAccuracy, RunningMean, TrainJaccardIndex, class_map


def test_running_mean_is_mean_metric_bit_for_bit():
    torch.manual_seed(0)
    ours, theirs = RunningMean(), MeanMetric()  # finite values: every nan_strategy sums alike
    for value in torch.rand(300) * 10:
        ours.update(value)
        theirs.update(value)
    assert torch.equal(ours.compute(), theirs.compute())
    ours.update(torch.tensor(float("nan")))
    assert torch.isnan(ours.compute())  # a NaN shows, as with nan_strategy="disable"


def test_running_accuracy_is_multiclass_accuracy():
    torch.manual_seed(0)
    ours, theirs = RunningAccuracy(), MulticlassAccuracy(7, top_k=1, average="micro")
    for _ in range(20):
        logits, labels = torch.randn(33, 7), torch.randint(0, 7, (33,))
        logits[:5] = 0.0  # ties: the first class
        ours.update(logits, labels)
        theirs.update(logits, labels)
    assert torch.equal(ours.compute(), theirs.compute())


@pytest.mark.parametrize("ignore_index", [255, 0, None])
def test_train_jaccard_index_is_multiclass_jaccard_index(ignore_index):
    torch.manual_seed(0)
    ours = TrainJaccardIndex(3, ignore_index=ignore_index, validate_args=False)
    theirs = MulticlassJaccardIndex(3, ignore_index=ignore_index, validate_args=False)
    for _ in range(5):
        preds, target = torch.randint(0, 3, (2, 9, 11)), torch.randint(0, 3, (2, 9, 11))
        if ignore_index == 255:
            target[:, :2] = 255
        ours.update(preds, target)
        theirs.update(preds, target)
    assert torch.equal(ours.confmat, theirs.confmat)
    assert torch.equal(ours.compute(), theirs.compute())


def test_class_map_is_argmax_with_ties_and_nan():
    torch.manual_seed(0)
    for classes in (1, 2, 5):
        logits = torch.randn(3, classes, 7, 9)
        logits[:, :, ::2] = logits[:, :1, ::2]  # ties
        logits[torch.rand_like(logits) < 0.05] = float("nan")
        assert torch.equal(class_map(logits), logits.argmax(dim=1))
        channels_last = logits.contiguous(memory_format=torch.channels_last)
        assert torch.equal(class_map(channels_last), logits.argmax(dim=1))


def fake_trainer(step: int = 0) -> SimpleNamespace:
    optimizer = SimpleNamespace(param_groups=[{"lr": 0.1}])
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision)
    return SimpleNamespace(global_step=step, optimizers=[optimizer], strategy=strategy, current_epoch=0)


def test_the_finite_loss_check_names_the_first_bad_step_at_the_next_check():
    callback = StopOnNonFiniteLoss(check_every_n_steps=4)
    trainer = fake_trainer()
    losses = [1.0, 2.0, float("inf"), float("nan"), 3.0, float("nan")]
    with pytest.raises(TrainingDiverged, match=r"became inf at step 3 \(epoch 1\) with learning rate 0.1"):
        for step, loss in enumerate(losses, start=1):
            trainer.global_step = step - 1
            callback.on_train_batch_start(trainer, None, None, step - 1)
            trainer.global_step = step
            callback.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, step - 1)
            assert step < 4, "no check before step 4"
    # finite losses: nothing raised, nothing kept past a check
    callback = StopOnNonFiniteLoss(check_every_n_steps=2)
    for step in range(1, 6):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, torch.tensor(0.5), None, step - 1)
    callback.on_train_epoch_end(trainer, None)
    assert callback._pending == [] and int(callback._first_bad[0]) == -1


def test_the_epoch_end_check_sees_the_steps_since_the_last_one():
    callback, trainer = StopOnNonFiniteLoss(check_every_n_steps=100), fake_trainer()
    for step, loss in enumerate([0.1, float("nan"), 0.2], start=1):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, torch.tensor([loss, 0.0]), None, step - 1)
    with pytest.raises(TrainingDiverged, match=r"became nan at step 2"):
        callback.on_train_epoch_end(trainer, None)


def test_callbacks_skip_only_the_hooks_they_leave_empty():
    from visiontrain.callbacks.learning_curves import LearningCurves
    from visiontrain.runs.console import EpochLine, ProgressBar

    @batch_hooks_only_where_used
    class Uses(Callback):
        def on_train_batch_end(self, *args) -> None:
            pass

    assert Uses.on_train_batch_end is not None and Uses.on_train_batch_start is None
    assert all(getattr(LearningCurves, name) is None for name in PER_BATCH_HOOKS)
    assert all(getattr(EpochLine, name) is None for name in PER_BATCH_HOOKS)
    assert StopOnNonFiniteLoss.on_train_batch_end is not None and StopOnNonFiniteLoss.on_before_backward is None
    assert ProgressBar.on_train_batch_end is not None and ProgressBar.on_validation_batch_start is not None
    assert Callback.on_train_batch_end is not None  # Lightning's own class is untouched


def test_the_progress_bar_redraws_every_refresh_rate_batches_and_at_the_last(monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar

    from visiontrain.runs.console import ProgressBar

    drawn = []
    monkeypatch.setattr(RichProgressBar, "on_train_batch_end", lambda self, t, m, o, b, i: drawn.append(i + 1))
    monkeypatch.setattr(ProgressBar, "total_train_batches", property(lambda self: 25))
    bar = ProgressBar(refresh_rate=10)
    for batch_idx in range(25):
        bar.on_train_batch_end(None, None, None, None, batch_idx)
    assert drawn == [10, 20, 25]


# train/val losses of `python train.py` with these overrides on the tests' MNIST, one thread, recorded with the code
# before the per-step overhead was taken out (the lean metrics, the finite-loss check, the skipped hooks)
RECORDED = {"train/loss": 0.1470012664794922, "train/acc": 1.0, "val/loss": 1.0668158531188965, "val/acc": 1.0}


def test_a_short_default_run_logs_the_values_it_logged_before(make_config):
    from visiontrain.cli.train import train

    cfg = make_config(
        "train",
        ["data.val_size=100", "trainer.max_epochs=2", "trainer.limit_train_batches=3", "test=false", "logger=none",
         "callbacks.learning_curves=null", "model.channels_last=false"],
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = train(cfg)
    finally:
        torch.set_num_threads(threads)
    for name, value in RECORDED.items():
        assert metrics[name] == pytest.approx(value, rel=1e-5), name


def test_the_hook_name_set_around_every_hook_skips_the_module_checks_and_nothing_else(make_config, monkeypatch):
    """Lightning sets ``_current_fx_name`` before and after every hook (~45 times a step): set as a plain attribute,
    not through nn.Module.__setattr__'s Parameter/Buffer/Module checks; every other attribute still goes there."""
    from hydra.utils import instantiate

    task = instantiate(make_config("train", []).model)
    probe = torch.nn.Linear(1, 1)
    through_module = []
    module_setattr = torch.nn.Module.__setattr__

    def counting(self, name, value):
        through_module.append(name)
        module_setattr(self, name, value)

    monkeypatch.setattr(torch.nn.Module, "__setattr__", counting)
    task._current_fx_name = "training_step"
    assert task._current_fx_name == "training_step" and through_module == []
    task.probe = probe  # a submodule is still registered as one
    assert through_module == ["probe"] and "probe" in dict(task.named_children())


@pytest.mark.parametrize("redraw_seconds, drawings", [(0, 3), (3600, 1)])
def test_learning_curves_are_redrawn_when_due_and_at_the_end(make_config, monkeypatch, redraw_seconds, drawings):
    """A drawing costs ~0.3 s: after every epoch with ``redraw_seconds=0`` (the last epoch's is the end's, which also
    goes to TensorBoard), otherwise once it is due; always at the end, with every epoch's row, and only once."""
    import matplotlib.pyplot as plt

    from visiontrain.callbacks import learning_curves
    from visiontrain.cli.train import train

    drawn = []  # (tag, the epochs drawn)

    def figure(history, monitor):
        drawn.append([row["epoch"] for row in history])
        return plt.figure()

    def publish(trainer, name, fig, tag=None):
        drawn[-1] = (tag, drawn[-1])
        plt.close(fig)

    monkeypatch.setattr(learning_curves, "learning_curves_figure", figure)
    monkeypatch.setattr(learning_curves, "publish_figure", publish)
    cfg = make_config(
        "train",
        ["data.val_size=100", "trainer.max_epochs=3", "trainer.limit_train_batches=2", "test=false",
         f"callbacks.learning_curves.redraw_seconds={redraw_seconds}"],
    )  # fmt: skip
    train(cfg)
    every_epoch = [(None, [1]), (None, [1, 2])]
    assert drawn == every_epoch[: drawings - 1] + [("train/learning_curves", [1, 2, 3])]

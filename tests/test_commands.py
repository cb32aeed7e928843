"""One command, ``visiontrain <command>``, and ``visiontrain check``: what each says, in this process."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests import formats
from tests.conftest import QUIET, process_state_restored
from visiontrain.cli import check, main


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    with process_state_restored(), pytest.raises(SystemExit) as exit_:
        main.main(args)
    out, err = capsys.readouterr()
    code = exit_.value.code
    return (code if isinstance(code, int) else 1), out, err + (code if isinstance(code, str) else "")


def test_help_lists_the_commands_and_the_config_groups(capsys):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    for command in ("train", "eval", "predict", "export", "browse", "check", "sweep-report", "label-issues"):
        assert f"\n  {command} " in out
    assert "config groups (group=option): calibrate, callbacks, data, debug, experiment, explain" in out


def test_a_mistyped_command_or_override_is_one_sentence(capsys):
    code, _, err = run_main(["trian", "model=resnet"], capsys)
    assert code == 1 and err.strip() == (
        "error: visiontrain has no command 'trian'; it has train, eval, predict, export, browse, check, sweep-report, "
        "label-issues."
    )
    code, _, err = run_main(["train", "trainer.max_epoch=1"], capsys)  # the train command's own check
    assert code == 1
    assert "error: trainer.max_epoch is not a config key; did you mean trainer.max_epochs?" in err


def test_browse_is_train_with_debug_browse(tmp_path, monkeypatch, capsys):
    data = formats.write_mnist(tmp_path / "data", n_train=100, n_test=20)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_DIR", str(data))
    args = ["browse", "data.download=false", "data.val_size=20", "hydra.run.dir=browsed", *QUIET[:1]]
    code, _, err = run_main(args, capsys)
    assert code == 0, err[-2000:]
    assert (tmp_path / "browsed" / "plots" / "training_samples.png").is_file()
    assert not (tmp_path / "browsed" / "checkpoints").exists()  # nothing trained


def test_check_reports_what_is_here(tmp_path, monkeypatch, capsys):
    formats.write_mnist(tmp_path, n_train=10, n_test=10)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert check.main() == 0
    out = capsys.readouterr().out
    assert "torchvision operators\n  nms" in out and "runs (torchvision" in out
    assert re.search(rf"data=mnist +found \({re.escape(str(tmp_path / 'MNIST' / 'raw'))}\)", out)
    assert "data=cifar10" in out and "not found" in out
    assert out.rstrip().endswith("ready: no problems found")


def test_check_names_each_problem_with_its_fix(tmp_path, monkeypatch, capsys):
    import torchvision.ops

    def mismatched(*args, **kwargs):  # what a torchvision built for another torch raises at its first operator
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(torchvision.ops, "nms", mismatched)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "nowhere"))
    assert check.main() == 1
    problems = [row for row in capsys.readouterr().out.splitlines() if row.startswith("problem: ")]
    assert len(problems) == 2
    assert "does not run with torch" in problems[0] and "(operator torchvision::nms does not exist)" in problems[0]
    assert "pip install --force-reinstall torch torchvision" in problems[0]
    assert problems[1].startswith(f"problem: DATA_DIR={tmp_path / 'nowhere'} is not a folder; point it at")


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export"])
def test_a_mistyped_key_is_answered_before_torch_loads(command, tmp_path):
    """The command line is checked first, and torch and Lightning load only once it is right: a mistake costs
    Hydra's composition, not their imports (~5 s). A fresh interpreter: this one has torch loaded already."""
    code = (
        "import sys\n"
        f"from visiontrain.cli.{command} import main\n"
        f"sys.argv = ['{command}.py', 'trainer.max_epoch=1']\n"
        "try:\n    main()\nexcept SystemExit as exit_:\n    print(exit_.code)\n"
        "print(sorted(m for m in ('torch', 'lightning', 'torchvision', 'matplotlib') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    answer, loaded = result.stdout.splitlines()
    assert answer.startswith("error: trainer.max_epoch is not a config key"), result.stderr[-2000:]
    assert loaded == "[]"


def test_shell_completion_completes_each_commands_overrides(monkeypatch, capsys):
    """Hydra's completion script asks ``visiontrain -sc query=bash`` with the whole line in COMP_LINE."""
    for line, expected in (
        ("visiontrain train model=res", "model=resnet"),
        ("visiontrain eval data=mni", "data=mnist"),
    ):
        monkeypatch.setenv("COMP_LINE", line)
        monkeypatch.setenv("COMP_POINT", str(len(line)))
        code, out, _ = run_main(["-sc", "query=bash"], capsys)
        assert code == 0 and out.split() == [expected]
    code, out, _ = run_main(["-sc", "install=bash"], capsys)
    assert "complete -o nospace -o default -F hydra_bash_completion visiontrain" in out

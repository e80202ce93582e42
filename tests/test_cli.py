"""The command-line surface: version, help, examples, debug tracebacks; and the in-process runner the other tests
use (conftest.run_cli) giving what the console script's process gives."""

from __future__ import annotations

import pytest
from PIL import Image

from conftest import assert_user_error, run_cli, run_process
from weakshot_cli import __version__


def test_version_and_help():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"weakshot {__version__}"
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("split", "train", "pseudolabel", "retrain", "evaluate", "predict", "demo"):
        assert cmd in r.stdout
    r = run_cli("split", "--help")
    assert r.returncode == 0 and "Example" in r.stdout and "--novel-ratio" in r.stdout


@pytest.mark.parametrize("cmd", ["split", "train", "evaluate", "predict", "pseudolabel", "retrain", "demo"])
def test_every_command_has_help_with_an_example(cmd):
    r = run_cli(cmd, "--help")
    assert r.returncode == 0 and "Example" in r.stdout, r.stdout


def test_debug_shows_the_traceback(tmp_path):
    """The console script's own process: its exit status and what reaches its stderr."""
    args = ["split", "--images", tmp_path / "missing", "--masks", tmp_path / "m", "--classes", tmp_path / "c.txt",
            "--novel", "a", "-o", tmp_path / "out"]
    assert_user_error(run_process(*args), "missing", "not found")
    r = run_process("--debug", *args)
    assert r.returncode != 0 and "Traceback" in r.stderr and "UserError" in r.stderr


def test_usage_errors_exit_2_without_traceback():
    r = run_process("split", "--no-such-option")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_in_process_runs_give_what_the_process_gives(tmp_path):
    """run_cli (in this process) against run_process (a child), each in its own working folder: the same exit
    status, stdout and stderr for a success with a table and a warning, a user error, a usage error and a traceback
    (below the runner's own frames), and nothing (--debug, the working folder) leaking into the next run."""
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / split / "a.png")
        Image.new("L", (8, 8)).save(tmp_path / "labels" / split / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "train" / "b.png")  # no label: a warning on stderr
    (tmp_path / "classes.txt").write_text("x\ny\n")
    split = ["split", "--images", tmp_path / "images", "--masks", tmp_path / "labels", "--classes",
             tmp_path / "classes.txt"]
    cases = [([*split, "--novel", "y", "-o", "ws"], 0), ([*split, "--novel", "y", "-o", "ws"], 2),
             (["split", "--no-such-option"], 2), (["--debug", *split, "--novel", "zebra", "-o", "ws2"], 1),
             ([*split, "--novel", "zebra", "-o", "ws2"], 2), (["--version"], 0)]
    for folder in ("child", "here"):
        (tmp_path / folder).mkdir()
    for i, (args, code) in enumerate(cases):
        child, here = run_process(*args, cwd=tmp_path / "child"), run_cli(*args, cwd=tmp_path / "here")
        assert child.returncode == code, (args, child.stderr)
        assert (here.returncode, here.stdout.replace("/here/", "/child/")) == (child.returncode, child.stdout), args
        if "Traceback" in child.stderr:  # the frames above main() differ: python -m's and the runner's
            here_tail, child_tail = (r.stderr.split("weakshot_cli/cli.py", 1)[1] for r in (here, child))
            assert here_tail == child_tail, args
        else:
            assert here.stderr.replace("/here/", "/child/") == child.stderr, args
        if i == 0:
            assert "Weak-shot dataset" in child.stdout and "warning: 1 image(s) have no label PNG" in child.stderr

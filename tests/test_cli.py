"""The command-line surface: version, help, examples, debug tracebacks."""

from __future__ import annotations

import pytest

from conftest import assert_user_error, run_cli
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
    args = ["split", "--images", tmp_path / "missing", "--masks", tmp_path / "m", "--classes", tmp_path / "c.txt",
            "--novel", "a", "-o", tmp_path / "out"]
    assert_user_error(run_cli(*args), "missing", "not found")
    r = run_cli("--debug", *args)
    assert r.returncode != 0 and "Traceback" in r.stderr and "UserError" in r.stderr


def test_usage_errors_exit_2_without_traceback():
    r = run_cli("split", "--no-such-option")
    assert r.returncode == 2 and "Traceback" not in r.stderr

"""The command-line fuzzer (scripts/cli_fuzz.py): a short run keeps the CLI's promise, and the
checker does catch a broken command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import cli_fuzz

from servesim.cli import main as cli
from servesim.errors import ServesimError


def _last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_short_run_finds_every_command_line_answered_properly(  # type: ignore[no-untyped-def]
    capsys, monkeypatch, tmp_path
) -> None:
    """Forty random command lines over the quick commands: each exits 0, 1 or 2, bad input in
    one line, nothing escapes (the long run: `scripts/cli_fuzz.py --cases 3000`); what the
    cases write stays in the fuzzer's scratch directory, not where it was started."""
    monkeypatch.chdir(tmp_path)
    assert cli_fuzz.main(["--cases", "40", "--seed", "2"]) == 0
    assert list(tmp_path.iterdir()) == []
    # A case may create the folders of an output path it is given: no pool path may point
    # outside the case's own directory (a "/nonexistent/file.yaml" once made /nonexistent).
    assert all(not p.startswith("/") or p == "/dev/null" for p in cli_fuzz.PATHS)
    out = _last_json(capsys)
    assert out["cases"] == 40 and out["failures"] == 0
    assert sum(out["exit_codes"].values()) + out["slow"] == 40
    assert out["exit_codes"].get("2", 0) > 0  # the pools do reach bad input


def test_the_checker_catches_an_exception_a_traceback_and_a_long_error(  # type: ignore[no-untyped-def]
    capsys, monkeypatch
) -> None:
    """A command that raises past `main`, one that prints a traceback and one that says its
    error in two lines are all counted as failures, with the command line printed."""

    def raises(args):  # type: ignore[no-untyped-def]
        raise ValueError("boom")

    monkeypatch.setitem(cli.COMMANDS, "devices", raises)
    assert cli_fuzz.main(["--cases", "3", "--commands", "devices"]) == 1
    text = capsys.readouterr().out
    assert json.loads(text.strip().splitlines()[-1])["failures"] == 3
    assert "FAIL case 0: servesim devices" in text
    assert cli_fuzz.problem(0, "Traceback (most recent call last):\n  ...") is not None
    assert cli_fuzz.problem(2, "error: one\nerror: two\n") is not None
    assert cli_fuzz.problem(3, "") is not None
    assert cli_fuzz.problem(2, "error: the --tp flag must be a whole number.\n") is None


def test_bad_fuzzer_flags_are_one_sentence() -> None:
    """Its own flags go through the scripts' checks."""
    for argv in (["--cases", "0"], ["--start", "-1"], ["--commands", "nosuch"]):
        with pytest.raises(ServesimError):
            cli_fuzz.main(argv)

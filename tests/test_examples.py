"""Every script in examples/ runs as a user would run it and prints what its docstring promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def run(path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(path.parents[1] / "src")}
    done = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return done.stdout


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {
        "predict_iteration.py",
        "simulate_trace.py",
        "disaggregate.py",
        "plan_small.py",
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_runs_and_says_how_to_run_itself(path: Path) -> None:
    assert f"python examples/{path.name}" in path.read_text()  # the docstring's command
    out = run(path)
    assert out.strip(), "an example prints its result"
    if path.name == "predict_iteration.py":
        ms = float(re.search(r"one iteration: ([\d.]+) ms", out).group(1))
        assert 1.0 < ms < 100.0  # 64 decodes over 2k context plus a 512-token chunk on an H100
        assert len(out.strip().splitlines()) == 6  # the total and five operators
    elif path.name in ("simulate_trace.py", "disaggregate.py"):
        assert len(re.findall(r"SLO met by \d+%", out)) == 2
    elif path.name == "plan_small.py":
        assert re.search(r"^#1 ", out, re.M) and "cheapest for 5 req/s:" in out

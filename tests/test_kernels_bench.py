"""`benchmarks/kernels.py --leave-one-gpu-out`: bad GPU choices end with one sentence and exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import kernels  # noqa: E402

pytest.importorskip("aiconfigurator_core")


def test_one_gpu_is_refused_with_the_fix_not_a_traceback(capsys):
    assert kernels.main(["--leave-one-gpu-out", "--gpus", "a100_sxm"]) == 2
    err = capsys.readouterr().err
    assert "needs two or more GPUs" in err and "--only" in err
    assert err.count("\n") == 1


def test_only_must_name_a_gpu_of_the_set(capsys):
    code = kernels.main(["--leave-one-gpu-out", "--gpus", "h100_sxm,h200_sxm", "--only", "t4"])
    assert code == 2
    err = capsys.readouterr().err
    assert "t4" in err and "h100_sxm, h200_sxm" in err
    assert err.count("\n") == 1


def test_only_leaves_out_the_named_gpu_and_fits_on_the_rest(capsys):
    pytest.importorskip("sklearn")
    args = ["--leave-one-gpu-out", "--gpus", "h100_sxm,h200_sxm,b200_sxm", "--only", "h200_sxm"]
    assert kernels.main([*args, "--fit-rows", "60", "--eval-rows", "40"]) == 0
    out = capsys.readouterr().out
    assert "h200_sxm: fitted on 2 other GPUs" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert list(summary["gpus"]) == ["h200_sxm"]

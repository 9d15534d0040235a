"""`benchmarks/kernels.py` and `benchmarks/fewshot.py --leave-one-gpu-out`: bad GPU choices end
with one sentence and exit 2; `--only` leaves out just the named GPUs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import fewshot  # noqa: E402
import kernels  # noqa: E402

from servesim.errors import ServesimError, script_exit  # noqa: E402

pytest.importorskip("aiconfigurator_core")


@pytest.mark.parametrize("bench", [kernels, fewshot])
def test_one_gpu_is_refused_with_the_fix_not_a_traceback(bench, capsys):
    with pytest.raises(ServesimError, match=r"needs two or more GPUs .* with --only"):
        bench.main(["--leave-one-gpu-out", "--gpus", "a100_sxm"])
    assert script_exit(lambda: bench.main(["--leave-one-gpu-out", "--gpus", "a100_sxm"])) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("bench", [kernels, fewshot])
def test_only_must_name_a_gpu_of_the_set(bench, capsys):
    args = ["--leave-one-gpu-out", "--gpus", "h100_sxm,h200_sxm", "--only", "t4"]
    with pytest.raises(ServesimError, match=r"\(t4\); pick from h100_sxm, h200_sxm"):
        bench.main(args)
    assert "NaN" not in capsys.readouterr().out  # no summary of nothing


def test_only_leaves_out_the_named_gpu_and_fits_on_the_rest(capsys):
    pytest.importorskip("sklearn")
    args = ["--leave-one-gpu-out", "--gpus", "h100_sxm,h200_sxm,b200_sxm", "--only", "h200_sxm"]
    assert kernels.main([*args, "--fit-rows", "60", "--eval-rows", "40"]) == 0
    out = capsys.readouterr().out
    assert "h200_sxm: fitted on 2 other GPUs" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert list(summary["gpus"]) == ["h200_sxm"]


def test_fewshot_only_adapts_to_the_named_gpu(capsys):
    pytest.importorskip("sklearn")
    args = ["--leave-one-gpu-out", "--gpus", "h100_sxm,h200_sxm,b200_sxm", "--only", "h200_sxm"]
    assert fewshot.main([*args, "--k", "0,3", "--fit-rows", "60", "--eval-rows", "40"]) == 0
    out = capsys.readouterr().out
    assert "h200_sxm: k=0:" in out and "h100_sxm: k=0:" not in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["k"] == [0, 3] and all(x == x for x in summary["median_ape"])  # no NaN

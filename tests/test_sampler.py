"""vLLM's sort-based top-k/top-p filter: its time from the sampler PRs' measured table, the
releases and requests it applies to, and its place in an iteration (not divided by TP)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from servesim.predictor import sampler
from servesim.predictor.iteration import BatchShape
from servesim.sim.deployment import Deployment
from servesim.spec.devices import Catalog, get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel
from servesim.spec.sampling import filters_logits, vllm_sorts_logits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import silicon  # noqa: E402

H100 = get_device("h100_sxm")


def test_filter_time_is_the_measured_table_at_its_rows_and_monotone_between() -> None:
    """At 131,072 entries on an H100 the figures are vLLM PRs #42191/#51507's PyTorch column
    (top-k and top-p on every row); between them the time rises with the rows."""
    rows = np.array([1, 4, 64, 128, 512])
    got = sampler.sort_filter_s(rows, 131_072, H100) * 1e3
    assert got == pytest.approx([0.167, 0.373, 1.164, 4.231, 6.427], rel=1e-9)
    dense = sampler.sort_filter_s(np.arange(1, 600), 131_072, H100)
    assert np.all(np.diff(dense) > 0)
    assert sampler.sort_filter_s(0, 131_072, H100)[0] == 0.0
    # 96 rows, log-log between 64 and 128: 1.164 × 1.5 ** log2(4.231 / 1.164) ms.
    expect = 1.164 * 1.5 ** np.log2(4.231 / 1.164)
    assert sampler.sort_filter_s(96, 131_072, H100)[0] * 1e3 == pytest.approx(expect, rel=1e-9)


def test_filter_time_grows_with_rows_past_the_table_and_with_the_vocabulary() -> None:
    """Beyond 512 rows it grows in proportion to them; it scales with the vocabulary and with
    the GPU's bandwidth against the H100's 3.35 TB/s."""
    at = sampler.sort_filter_s(np.array([512, 1024]), 131_072, H100)
    assert at[1] == pytest.approx(2 * at[0], rel=1e-12)
    qwen = sampler.sort_filter_s(128, 151_936, H100)[0]
    assert qwen * 1e3 == pytest.approx(4.231 * 151_936 / 131_072, rel=1e-9)  # 4.904 ms
    h200 = get_device("h200_sxm")
    ratio = 3.35e12 / h200.mem_bw_bytes_per_s
    assert sampler.sort_filter_s(128, 131_072, h200)[0] * 1e3 == pytest.approx(4.231 * ratio)


def test_vllm_releases_that_sort_and_checkpoints_that_filter() -> None:
    """The sort is vLLM's default from 0.11.1 (after PR #26859) through 0.15; requests that set
    nothing filter when the checkpoint's generation config sets top-k or top-p."""
    sorting = ("0.11.1", "0.12.0", "0.13.0", "0.14.1", "0.15.1")
    assert [vllm_sorts_logits(v) for v in sorting] == [True] * 5
    unsorted = ("", "nightly-dev-20260216", "0.10.2", "0.11.0", "0.16.0", "0.24.0")
    assert not any(vllm_sorts_logits(v) for v in unsorted)
    assert filters_logits("Qwen/Qwen3-32B") and filters_logits("meta-llama/Llama-3.1-8B-Instruct")
    assert not filters_logits("deepseek-ai/DeepSeek-R1")  # its generation config is not bundled


def _qwen_predictor(tp: int, sorts: bool, pp: int = 1):
    engine = get_engine("vllm").with_overrides(version="0.12.0", sampler_sorts_vocab=sorts)
    model = load_model("Qwen/Qwen3-32B")
    par = Parallel(tp=tp, pp=pp)
    return Deployment(model=model, device=H100, parallel=par, engine=engine).predictor()


@pytest.mark.parametrize("tp", [2, 8])
def test_the_filter_adds_to_every_step_undivided_by_tp(tp: int) -> None:
    """A decode step of 128 Qwen3-32B sequences costs the filter over 128 × 151,936 logits
    more (4.90 ms on an H100) at any TP; the breakdown lists it and still sums to the step."""
    plain, sorting = _qwen_predictor(tp, False), _qwen_predictor(tp, True)
    extra = sorting.step_s(128, 128 * 1500, ()) - plain.step_s(128, 128 * 1500, ())
    assert extra == pytest.approx(4.231e-3 * 151_936 / 131_072, rel=1e-9)
    # A prefill chunk's row is sampled too (its sample discarded until the prompt ends).
    mixed = sorting.ops(BatchShape(127, 127 * 1500, ((512, 0),)))
    (sort,) = [op for op in mixed if op.name == "topk_topp_sort"]
    assert sort.seconds == pytest.approx(extra, rel=1e-9)
    ops = sorting.ops(BatchShape(decode_seqs=128, decode_context=128 * 1500, prefill=()))
    (sort,) = [op for op in ops if op.name == "topk_topp_sort"]
    assert sort.seconds == pytest.approx(extra, rel=1e-9)
    assert sum(op.seconds for op in ops) == pytest.approx(sorting.step_s(128, 128 * 1500, ()))
    assert not any(op.name == "topk_topp_sort" for op in plain.ops(BatchShape(128, 0, ())))
    # Under pipeline parallelism the last stage alone samples: one filter an iteration.
    staged = _qwen_predictor(tp, True, pp=2).step_s(128, 0, ())
    assert staged - _qwen_predictor(tp, False, pp=2).step_s(128, 0, ()) == pytest.approx(extra)


def _h100_vllm_row() -> dict[str, str]:
    with open(silicon.DEFAULT_CSV, newline="") as f:
        return next(r for r in csv.DictReader(f) if r["backend"] == "vllm")


def test_the_silicon_bench_sorts_only_for_aiperf_rows_of_sorting_releases() -> None:
    """aiconfigurator's vLLM 0.12.0 rows (aiperf: no sampling parameters, Qwen3-32B's top-k 20 /
    top-p 0.95) sort; the same row from an older release, for a checkpoint without a filter or
    from InferenceX's greedy client does not."""
    r = _h100_vllm_row()
    assert r["backend_version"] == "0.12.0" and r["model_path"] == "Qwen/Qwen3-32B"
    assert silicon.deployment_of(r, Catalog()).engine.sampler_sorts_vocab
    for changed in (
        {"backend_version": "0.10.2"},
        {"model_path": "meta-llama/Meta-Llama-3.1-70B"},
        {"silicon_data_source": "db-dump/2026-04-27; config_id=1; silicon_concurrency=8"},
    ):
        dep = silicon.deployment_of({**r, **changed}, Catalog())
        assert not dep.engine.sampler_sorts_vocab, changed


def test_predict_prices_the_filter_for_filtered_requests_on_a_sorting_release(capsys) -> None:
    """`servesim predict --sampling filtered` on vLLM 0.12.0 lists the sort among the
    operators; greedy requests, or a release with a sorting-free sampler, do not."""
    from servesim.cli.main import main

    args = [
        "predict", "--model", "Qwen/Qwen3-32B", "--device", "h100_sxm", "--tp", "8",
        "--engine", "vllm", "--decode-seqs", "128", "--context", "1500", "--json",
    ]  # fmt: skip

    def sort_ms(*extra: str) -> float:
        assert main([*args, *extra]) == 0
        out = json.loads(capsys.readouterr().out)
        return sum(op["seconds"] for op in out["operators"] if op["name"] == "topk_topp_sort")

    expect = 4.231 * 151_936 / 131_072
    assert sort_ms("--engine-version", "0.12.0", "--sampling", "filtered") * 1e3 == (
        pytest.approx(expect, rel=1e-6)
    )
    assert sort_ms("--engine-version", "0.12.0") == 0.0
    assert sort_ms("--engine-version", "0.24.0", "--sampling", "filtered") == 0.0
    assert main([*args, "--sampling", "top-p"]) == 2
    assert "sampling" in capsys.readouterr().err


def test_a_plan_prices_the_filter_for_filtered_requests(capsys) -> None:
    """`plan --sampling filtered` builds vLLM 0.12.0 candidates that sort (SGLang's and a
    greedy plan's do not), and its stored answers are kept apart from a greedy plan's."""
    from servesim.cli.main import main
    from servesim.cli.plan import PlanSettings, build
    from servesim.planner.candidates import Candidate, PlanSpec, deployment_for

    model = "Qwen/Qwen3-32B"
    versions = (("vllm", "0.12.0"),)
    spec = PlanSpec(model=model, engine_versions=versions, sampling="filtered")
    greedy = PlanSpec(model=model, engine_versions=versions)
    assert spec.key() != greedy.key()
    assert greedy.key() == PlanSpec(model=model, engine_versions=versions, sampling="greedy").key()
    vllm = Candidate(device="h100_sxm", tp=8, engine="vllm")
    assert deployment_for(spec, vllm).engine.sampler_sorts_vocab
    assert not deployment_for(greedy, vllm).engine.sampler_sorts_vocab
    sglang = Candidate(device="h100_sxm", tp=8, engine="sglang")
    assert not deployment_for(spec, sglang).engine.sampler_sorts_vocab
    settings = PlanSettings(model=model, engine_version=("vllm=0.12.0",), sampling="filtered")
    assert build(settings)[0].sampling == "filtered"
    assert main(["plan", "--model", model, "--sampling", "nucleus"]) == 2
    assert "sampling" in capsys.readouterr().err

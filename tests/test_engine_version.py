"""The engine release a deployment serves picks the measured collection its kernels come from."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from servesim.cli.main import main
from servesim.errors import ServesimError
from servesim.predictor import kernel_tables, measured_kernels
from servesim.predictor.roofline import default_fit
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import silicon

# DeepSeek-R1's expert layer as TensorRT-LLM's TEP8 runs it: hidden, inter, top-k, experts,
# moe TP, EP.
LAYOUT = (7168, 2048, 8, 256, 1, 8)


def _table_s(version: str, tokens: int, routing: str = "power_law_1.01") -> float:
    """Seconds of that layout in one H200 TensorRT-LLM collection."""
    path = kernel_tables.data_root() / "h200_sxm" / "moe" / "trtllm" / version / "moe_perf.parquet"
    t = pq.read_table(str(path)).to_pandas()
    hit = t[
        (t.moe_dtype == "fp8_block")
        & (t.hidden_size == LAYOUT[0])
        & (t.inter_size == LAYOUT[1])
        & (t.topk == LAYOUT[2])
        & (t.num_experts == LAYOUT[3])
        & (t.moe_tp_size == LAYOUT[4])
        & (t.moe_ep_size == LAYOUT[5])
        & (t.distribution == routing)
        & (t.num_tokens == tokens)
    ]
    assert len(hit) == 1
    return float(hit.latency.iloc[0]) * 1e-3


def _moe_s(version: str | None, tokens: int, routing: str = "power_law_1.01") -> float:
    kernels = measured_kernels.backend(
        "measured", get_device("h200_sxm"), "trtllm", version, default_fit()
    )
    t, _ = kernels.moe(np.array([tokens]), LAYOUT, "fp8", True, routing, block=True)
    return float(t[0])


def test_a_release_reads_the_collection_nearest_it() -> None:
    # 1.2.0rc6 was not measured: 1.3.0rc10 is the nearest collection holding the layout, and
    # its balanced rows price it; the newest (1.3.0rc20, what no version reads) is faster.
    assert _moe_s("1.2.0rc6", 1, "balanced") == pytest.approx(
        _table_s("1.3.0rc10", 1, "balanced"), rel=1e-9
    )
    assert _moe_s(None, 1, "balanced") == pytest.approx(
        _table_s("1.3.0rc20", 1, "balanced"), rel=1e-9
    )
    assert _table_s("1.3.0rc10", 1, "balanced") > 1.2 * _table_s("1.3.0rc20", 1, "balanced")


def test_routed_rows_come_from_a_collection_made_after_the_routing_refinement() -> None:
    # 1.3.0rc10's power-law rows predate aiconfigurator PR #876: at one token they are 2.6x
    # its balanced ones (a lone token's experts piled on one rank), rc20's are 1.0x. A routed
    # price for 1.2.0rc6 therefore comes from rc20, the nearest refined collection.
    assert _table_s("1.3.0rc10", 1) > 2.5 * _table_s("1.3.0rc10", 1, "balanced")
    assert _table_s("1.3.0rc20", 1) < 1.05 * _table_s("1.3.0rc20", 1, "balanced")
    assert _moe_s("1.2.0rc6", 1) == pytest.approx(_table_s("1.3.0rc20", 1), rel=1e-9)
    assert _moe_s("1.3.0rc20", 1) == pytest.approx(_table_s("1.3.0rc20", 1), rel=1e-9)


def test_an_engine_version_must_be_a_release() -> None:
    assert get_engine("trtllm").with_overrides(version="1.2.0rc6.post2").version == "1.2.0rc6.post2"
    with pytest.raises(ServesimError, match="not a release"):
        get_engine("trtllm").with_overrides(version="tensorrtllm-runtime:0.8.1")


def test_predict_takes_the_engine_release(capsys) -> None:
    args = [
        "predict", "--model", "deepseek-ai/DeepSeek-R1", "--device", "h200_sxm", "--tp", "8",
        "--ep", "8", "--engine", "trtllm", "--decode-seqs", "1", "--context", "1500", "--json",
    ]  # fmt: skip
    assert main(args) == 0
    newest = json.loads(capsys.readouterr().out)
    assert main([*args, "--engine-version", "1.2.0rc6"]) == 0
    older = json.loads(capsys.readouterr().out)
    assert older["totals"]["seconds"] > newest["totals"]["seconds"]
    assert main([*args, "--engine-version", "latest"]) == 2
    assert "not a release" in capsys.readouterr().err


def test_a_dynamo_image_names_the_tensorrt_llm_release_inside_it() -> None:
    row = {
        "backend": "trtllm",
        "backend_version": "0.8.1.post1",
        "silicon_data_source": "source_file=2026-03-25.csv; measured=2026-02-14T06:57:35Z; "
        "image=nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:0.8.1.post1",
    }
    assert silicon.engine_release(row) == "1.2.0rc6.post2"
    row["silicon_data_source"] = row["silicon_data_source"].replace("0.8.1.post1", "0.5.1-rc0")
    assert silicon.engine_release(row) == ""  # before Dynamo's published history
    plain = {"backend": "sglang", "backend_version": "0.5.9", "silicon_data_source": ""}
    assert silicon.engine_release(plain) == "0.5.9"
    plain["backend_version"] = "nightly-dev-20260216-d3bae71e"
    assert silicon.engine_release(plain) == ""


def test_an_export_without_an_image_takes_the_release_of_the_config_it_matched() -> None:
    # A dashboard export of early 2026 names no image and no backend_version; the InferenceX
    # config it matched does (`matched_image`, set by single_node_config / recovered_layout).
    row = {"backend": "sglang", "backend_version": "", "silicon_data_source": "wip=False"}
    assert silicon.engine_release(row) == ""
    cases = {
        "lmsysorg/sglang:v0.5.8.post1-cu130-amd64": "0.5.8.post1",
        "vllm/vllm-openai:v0.12.0": "0.12.0",
        "nvcr.io/nvidia/tensorrt-llm/release:1.2.0rc6.post2": "1.2.0rc6.post2",
        "nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:0.8.1.post3": "1.2.0rc6.post3",
        "nvcr.io/nvidia/ai-dynamo/sglang-runtime:0.5.1-rc0.pre1": "",
        "lmsysorg/sglang:nightly-dev-20260216-d3bae71e": "",
    }
    for image, release in cases.items():
        assert silicon.engine_release({**row, "matched_image": image}) == release, image


def test_a_plan_prices_each_engine_at_its_stated_release(capsys, tmp_path) -> None:
    from servesim.planner.candidates import Candidate, PlanSpec, deployment_for

    spec = PlanSpec(model="meta-llama/Llama-3.1-8B", engine_versions=(("sglang", "0.5.9"),))
    plain = PlanSpec(model="meta-llama/Llama-3.1-8B")
    assert spec.key() != plain.key()  # stored answers of another release are not reused
    sglang = deployment_for(spec, Candidate(device="h200_sxm", tp=1, engine="sglang"))
    vllm = deployment_for(spec, Candidate(device="h200_sxm", tp=1, engine="vllm"))
    assert (sglang.engine.version, vllm.engine.version) == ("0.5.9", "")
    assert "tp1 sglang 0.5.9 " in sglang.label() and "tp1 vllm budget" in vllm.label()

    base = ["plan", "--model", "meta-llama/Llama-3.1-8B", "--gpus", "h100_sxm", "--tp", "1"]
    base += ["--num-requests", "10", "--out", str(tmp_path / "p")]
    assert main([*base, "--engine-version", "0.12.0"]) == 2
    assert "ENGINE=RELEASE, e.g. vllm=0.12.0" in capsys.readouterr().err
    assert main([*base, "--engine-version", "trtllm=1.2.0rc6"]) == 2
    assert "does not search" in capsys.readouterr().err
    assert main([*base, "--engine-version", "vllm=newest"]) == 2
    assert "not a release" in capsys.readouterr().err


def test_the_collections_a_release_can_pick_are_listed(capsys) -> None:
    found = kernel_tables.collections("h200_sxm")
    assert "moe" in found["trtllm"]["1.3.0rc10"] and "gemm" in found["trtllm"]["1.3.0rc20"]
    releases = list(found["trtllm"])
    assert releases.index("1.3.0rc10") < releases.index("1.3.0rc20")  # oldest first
    assert main(["devices", "--tables"]) == 0
    assert "measured kernel collections" in capsys.readouterr().out


def test_the_vllm_release_defaults_read_the_same_release() -> None:
    # A Dynamo vLLM image's tag is Dynamo's (0.8.0), not vLLM's; the matched config's image
    # counts where the row names none.
    dynamo = {"silicon_data_source": "image=nvcr.io/nvidia/ai-dynamo/vllm-runtime:0.8.0"}
    assert silicon.vllm_release({**dynamo, "backend_version": ""}) == ()
    assert silicon.vllm_release({**dynamo, "backend_version": "0.12.0"}) == (0, 12)
    bare = {"silicon_data_source": "wip=False", "matched_image": "vllm/vllm-openai:v0.12.0"}
    assert silicon.vllm_release(bare) == (0, 12)


def test_a_plan_names_its_engines_as_its_exports_do() -> None:
    """`--engines SGLang` ran SGLang's profile, but the exports compare names literally, so the
    k8s manifest fell back to vLLM and launch_sglang.sh said no SGLang candidate met the SLO:
    the plan now searches the profiles' own names, releases keyed the same way."""
    from servesim.cli.plan import PlanSettings, build

    s = PlanSettings(
        model="meta-llama/Llama-3.1-8B",
        engines=("SGLang", "TensorRT-LLM", "vllm", "sglang"),
        engine_version=("SGLang=0.5.9",),
    )
    spec, space = build(s)
    assert space.engines == ("sglang", "trtllm", "vllm")
    assert spec.engine_versions == (("sglang", "0.5.9"),)
    one = PlanSettings(
        model="meta-llama/Llama-3.1-8B", engines=("SGLang",), engine_version=("0.5.9",)
    )
    assert build(one)[0].engine_versions == (("sglang", "0.5.9"),)

"""The measured kernel tables of aiconfigurator-core: found in place, the nearest engine version."""

from __future__ import annotations

import pytest

from servesim.predictor import kernel_tables as kt
from servesim.spec.release import FINAL_RELEASE


def test_the_package_has_the_gpus_servesim_plans_on() -> None:
    assert {"h100_sxm", "h200_sxm", "b200_sxm", "gb200", "a100_sxm", "l40s"} <= set(kt.gpus())


@pytest.mark.parametrize(
    ("available", "wanted", "chosen"),
    [
        (["0.10.1", "0.11.0", "0.24.0"], "0.11.0", "0.11.0"),  # exact
        (["0.10.1", "0.11.0", "0.24.0"], "0.12.0", "0.11.0"),  # nearest minor
        (["0.10.1", "0.12.0"], "0.11.0", "0.12.0"),  # a tie goes to the newer
        (["1.0.0rc3", "1.3.0rc20"], "1.2.0", "1.3.0rc20"),
        (["0.5.14", "0.5.16"], None, "0.5.16"),  # nothing asked: the newest
    ],
)
def test_nearest_version(available, wanted, chosen) -> None:
    assert kt.nearest_version(available, wanted) == chosen


def test_a_gemm_table_reads_as_columns() -> None:
    path, version = kt.find("h100_sxm", "gemm", "gemm_perf", "vllm", "0.20.0")
    assert version in kt.versions("h100_sxm", "gemm", "vllm")
    cols = kt.read(path, ("gemm_dtype", "m", "n", "k", "latency"))
    assert len(cols["m"]) > 1000 and (cols["latency"] > 0).all()
    assert {"bfloat16", "fp8"} <= set(cols["gemm_dtype"])
    assert kt.find("h100_sxm", "gemm", "no_such_table", "vllm") is None


def test_version_keys_drop_a_container_tag_s_build_suffix() -> None:
    """A row's engine version can come spelled as its container tag: the release it names
    orders as that release (before, "0.5.6.post2-cu130" read as unparsable, (0,), and turned
    SGLang's mixed chunking off for a 0.5.6 run)."""
    key = kt.version_key
    assert key("0.5.6.post2-cu130") == key("0.5.6.post2") == (0, 5, 6, FINAL_RELEASE)
    assert key("v0.5.9") == key("0.5.9") > key("0.5.6")
    assert key("1.2.0rc6.post2") == (1, 2, 0, 6) < key("1.2.0")
    assert key("nightly") == (0,)


def test_a_dtype_the_nearest_collection_lacks_comes_from_the_next_nearest() -> None:
    # SGLang 0.5.14's H100 GEMM table holds no int8 weight-only rows; an older collection does.
    found = kt.find_all("h100_sxm", "gemm", "gemm_perf", "sglang", "0.5.14")
    assert found[0][1] == "0.5.14" and "int8_wo" not in kt.gemm_dtypes_of(found[0][0])
    older = next(p for p, _ in found[1:] if "int8_wo" in kt.gemm_dtypes_of(p))
    assert kt.gemm_table("h100_sxm", "int8_wo", ("sglang",), "0.5.14") == older
    assert kt.gemm_table("h100_sxm", "bfloat16", ("sglang",), "0.5.14") == found[0][0]

"""benchmarks/silicon.py reads any silicon-sample CSV: colocated and disaggregated rows, MoE
layouts, and rows it cannot predict counted with their reason."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import silicon  # noqa: E402

from servesim.sim.disagg import DisaggDeployment  # noqa: E402
from servesim.spec.devices import Catalog  # noqa: E402
from servesim.spec.parallel import Parallel  # noqa: E402

with open(silicon.DEFAULT_CSV, newline="") as f:
    HEADER = next(csv.reader(f))


def row(**kw: str) -> dict[str, str]:
    base = {k: "" for k in HEADER}
    base.update(
        id="t",
        backend="trtllm",
        model_path="Qwen/Qwen3-32B",
        system="h100_sxm",
        mode="agg",
        isl="4096",
        osl="256",
        silicon_ttft_ms="100",
        silicon_tpot_ms="10",
    )
    base.update(kw)
    return base


def test_disaggregated_row_builds_both_pools_with_the_generator_batching() -> None:
    r = row(
        mode="disagg",
        silicon_data_source="silicon_concurrency=48",
        prefill_batch_size="1",
        prefill_num_workers="3",
        prefill_tp_size="2",
        decode_batch_size="24",
        decode_num_workers="2",
        decode_tp_size="4",
    )
    dep = silicon.deployment_of(r, Catalog())
    assert isinstance(dep, DisaggDeployment)
    assert dep.prefill.replicas == 3 and dep.prefill.parallel == Parallel(tp=2)
    assert dep.decode.replicas == 2 and dep.decode.parallel == Parallel(tp=4)
    # TensorRT-LLM rule: prefill max_num_tokens = ISL + 1500, decode = batch, in 32-token pages.
    assert dep.prefill.max_num_batched_tokens == 5600 and dep.decode.max_num_batched_tokens == 32
    assert dep.prefill.chunked_prefill is False and dep.decode.max_num_seqs == 24
    assert dep.link == "infiniband"  # 6 + 8 GPUs span two 8-GPU nodes
    assert silicon.concurrency_of(r) == 48
    assert silicon.concurrency_of({**r, "silicon_data_source": ""}) == 48  # 24 × 2 workers
    ttft, tpot = silicon.simulate_row(r, Catalog(), rounds=2)
    assert 0 < ttft < 5000 and 0 < tpot < 100


def test_moe_row_maps_expert_parallelism_and_quantisation() -> None:
    r = row(
        model_path="Qwen/Qwen3-30B-A3B",
        gemm_quant_mode="fp8_block",
        moe_quant_mode="w4afp8",
        batch_size="16",
        tp_size="4",
        moe_tp_size="1",
        moe_ep_size="4",
    )
    dep = silicon.deployment_of(r, Catalog())
    assert dep.parallel == Parallel(tp=4, ep=4, moe_tp_size=1) and dep.parallel.moe_tp == 1
    assert dep.model.weight_dtype == "fp8" and dep.model.expert_dtype == "int4"
    assert dep.model.kv_dtype == "fp8"
    with pytest.raises(Exception, match="moe_tp=2"):
        silicon.deployment_of({**r, "moe_tp_size": "2"}, Catalog())


def test_main_counts_skipped_rows_with_their_reason(tmp_path: Path, capsys) -> None:
    rows = [
        row(batch_size="8", tp_size="2", silicon_data_source="silicon_concurrency=8"),
        row(model_path="nobody/unknown-model", batch_size="8", tp_size="2"),
        row(system="nonexistent_gpu", batch_size="8", tp_size="2"),
    ]
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HEADER)
        w.writeheader()
        w.writerows(rows)
    assert silicon.main([str(path), "--rounds", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    last = json.loads(out[-1])
    assert last["rows"] == 1 and last["skipped"] == 2
    skips = [line for line in out if line.startswith("skipped")]
    assert any("unknown-model" in s for s in skips) and any("nonexistent_gpu" in s for s in skips)


def test_attention_dp_row_scales_per_rank_limits_to_the_replica() -> None:
    """aiconfigurator's batch size and token budgets are per attention-DP rank; a servesim
    replica holds all ranks, so a DEP8 row gets 8 times the slots and budget of one rank."""
    r = row(
        model_path="deepseek-ai/DeepSeek-V3",
        system="h200_sxm",
        backend="sglang",
        gemm_quant_mode="fp8_block",
        moe_quant_mode="fp8_block",
        batch_size="32",
        tp_size="1",
        attention_dp_size="8",
        moe_tp_size="1",
        moe_ep_size="8",
    )
    dep = silicon.deployment_of(r, Catalog())
    # SGLang keeps the dense FFN layers tensor-parallel over all 8 GPUs (moe_dense_tp_size).
    assert dep.parallel == Parallel(tp=1, dp=8, ep=8, moe_tp_size=1, dense_tp_size=8)
    assert dep.num_devices == 8
    assert dep.max_num_seqs == 256 and dep.max_num_batched_tokens == 8 * (4096 + 1500)


def test_moe_tp_across_attention_dp_ranks_is_represented() -> None:
    """SGLang dp-attention with MoE TP 8 (ep 1) over 8 GPUs: the experts are split 8 ways,
    not replicated on every rank (which put 673 GB of weights on each GPU)."""
    r = row(
        model_path="deepseek-ai/DeepSeek-R1",
        system="b200_sxm",
        backend="sglang",
        gemm_quant_mode="fp8_block",
        moe_quant_mode="fp8_block",
        batch_size="16",
        tp_size="1",
        attention_dp_size="8",
        moe_tp_size="8",
        moe_ep_size="1",
    )
    dep = silicon.deployment_of(r, Catalog())
    assert dep.parallel.moe_tp == 8 and dep.parallel.dense_tp == 8
    assert dep.memory().weight_bytes < 110e9
    with pytest.raises(Exception, match="moe_tp=4"):
        silicon.deployment_of({**r, "moe_tp_size": "4"}, Catalog())


def test_dense_row_ignores_its_moe_columns() -> None:
    """The H100 file's dense rows carry moe_tp_size=1, moe_ep_size=1 beside tp=2: a dense model
    has no expert layers, so those columns must not refuse the row."""
    r = row(tp_size="2", moe_tp_size="1", moe_ep_size="1", batch_size="8")
    dep = silicon.deployment_of(r, Catalog())
    assert dep.parallel.tp == 2 and dep.parallel.ep == 1


def test_inferencex_sglang_rows_get_the_scripts_recv_interval_and_prefill_budget() -> None:
    """InferenceX's SGLang launch scripts (benchmarks/single_node/*.sh): recv every 10 decode
    steps below 16 clients, else 30, on B200; none on H200; their prefill budgets."""
    ix = "db-dump/2026-04-27; config_id=1; silicon_concurrency={c}; measured=2026-03-01"
    r = row(
        backend="sglang",
        model_path="deepseek-ai/DeepSeek-R1",
        system="b200_sxm",
        gemm_quant_mode="fp8",
        tp_size="8",
        silicon_data_source=ix.format(c=4),
    )
    assert silicon.inferencex_sglang_launch(r) == (10, 32768)
    r["silicon_data_source"] = ix.format(c=64)
    assert silicon.inferencex_sglang_launch(r) == (30, 32768)
    r["tp_size"] = "4"
    assert silicon.inferencex_sglang_launch(r) == (10, 8192)
    r.update(gemm_quant_mode="nvfp4")
    assert silicon.inferencex_sglang_launch(r) == (30, 16384)
    r.update(system="h200_sxm", gemm_quant_mode="fp8")
    assert silicon.inferencex_sglang_launch(r) == (1, 32768)
    q = row(
        backend="sglang",
        model_path="Qwen/Qwen3.5-397B-A17B",
        system="h200_sxm",
        silicon_data_source=ix.format(c=8),
    )
    assert silicon.inferencex_sglang_launch(q) == (1, 16384)
    # aiconfigurator's own aiperf rows and other engines keep their launch.
    assert (
        silicon.inferencex_sglang_launch({**r, "silicon_data_source": "x-gap-analysis.csv"}) is None
    )
    assert silicon.inferencex_sglang_launch({**r, "backend": "trtllm"}) is None
    dep = silicon.deployment_of(
        {
            **row(
                backend="sglang",
                model_path="Qwen/Qwen3.5-397B-A17B",
                system="b200_sxm",
                tp_size="8",
                isl="1024",
                osl="1024",
                gemm_quant_mode="fp8",
                moe_quant_mode="fp8_block",
                silicon_data_source=ix.format(c=4),
            )
        },
        Catalog(),
    )
    assert dep.engine.recv_interval_steps == 10
    assert dep.max_num_batched_tokens == 32768


def test_inferencex_trtllm_rows_get_the_scripts_token_budget_and_batch_waiting() -> None:
    """InferenceX's TensorRT-LLM launches: Llama-3.1-70B 16,384 tokens, waiting 20 iterations
    or 0.9 of it at 1k/1k below TP 8; DeepSeek max(8192, CONC + ISL + 64 up to 64), waiting
    40 / 0.8 only for fp8 on B200 at 1k/1k with 64+ clients."""
    ix = "db-dump/2026-04-27; config_id=1; silicon_concurrency={c}; measured=2026-03-01"
    llama = row(
        model_path="meta-llama/Llama-3.1-70B",
        system="b200_sxm",
        isl="1024",
        osl="1024",
        tp_size="4",
        silicon_data_source=ix.format(c=4),
    )
    assert silicon.inferencex_trtllm_launch(llama) == (16384, 20, 0.9)
    assert silicon.inferencex_trtllm_launch({**llama, "osl": "8192"}) == (16384, 0, 0.0)
    assert silicon.inferencex_trtllm_launch({**llama, "tp_size": "8"}) == (16384, 0, 0.0)
    ds = row(
        model_path="deepseek-ai/DeepSeek-R1",
        system="b200_sxm",
        isl="1024",
        osl="1024",
        tp_size="8",
        gemm_quant_mode="fp8",
        silicon_data_source=ix.format(c=64),
    )
    assert silicon.inferencex_trtllm_launch(ds) == (8192, 40, 0.8)
    # 256 + 8192 + 64 = 8512 → 8512 (a multiple of 64)
    ds8k = {**ds, "isl": "8192", "silicon_data_source": ix.format(c=256)}
    assert silicon.inferencex_trtllm_launch(ds8k) == (8512, 0, 0.0)
    assert silicon.inferencex_trtllm_launch({**ds, "system": "h200_sxm"}) == (8192, 0, 0.0)
    assert silicon.inferencex_trtllm_launch({**ds, "attention_dp_size": "8"}) is None
    assert (
        silicon.inferencex_trtllm_launch({**ds, "silicon_data_source": "x-gap-analysis.csv"})
        is None
    )
    dep = silicon.deployment_of(llama, Catalog())
    assert dep.engine.batch_wait_timeout_iters == 20
    assert dep.max_num_batched_tokens == 16384

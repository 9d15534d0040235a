"""benchmarks/silicon.py reads any silicon-sample CSV: colocated and disaggregated rows, MoE
layouts, and rows it cannot predict counted with their reason."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import silicon  # noqa: E402

from servesim.predictor.iteration import BatchShape  # noqa: E402
from servesim.sim.deployment import Deployment  # noqa: E402
from servesim.sim.disagg import DisaggDeployment  # noqa: E402
from servesim.spec.devices import Catalog  # noqa: E402
from servesim.spec.engine_profile import get_engine  # noqa: E402
from servesim.spec.model import load_model  # noqa: E402
from servesim.spec.parallel import Parallel  # noqa: E402

with open(silicon.DEFAULT_CSV, newline="") as f:
    HEADER = next(csv.reader(f))


# An InferenceX database record's provenance at 4 clients (its client and launch scripts).
INFERENCEX_SOURCE = "db-dump/2026-04-27; config_id=1; silicon_concurrency=4; measured=2026-03-01"
AIPERF_SOURCE = "source_file=/x/aic-auto-gap-analysis/y.csv"


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
    assert dep.link_kind() == "infiniband"  # 6 + 8 GPUs span two 8-GPU nodes
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


def test_a_spreadsheet_export_with_a_byte_order_mark_is_read(tmp_path: Path, capsys) -> None:
    """A CSV saved by a spreadsheet starts with a UTF-8 byte-order mark and CRLF line ends; its
    first column keeps its name (it used to read as '\\ufeffid', so the file was refused)."""
    path = tmp_path / "exported.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        w = csv.DictWriter(f, fieldnames=HEADER, lineterminator="\r\n")
        w.writeheader()
        w.writerow(
            {**row(batch_size="8", tp_size="2"), "silicon_data_source": "silicon_concurrency=8"}
        )
    assert silicon.main([str(path), "--rounds", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == 1


def test_a_file_without_rows_ends_with_strict_json(tmp_path: Path, capsys) -> None:
    """A header and no rows: nothing to score, so the figures are null, not NaN (which a
    strict JSON reader refuses), and the run still exits 0."""
    path = tmp_path / "empty.csv"
    with open(path, "w", newline="") as f:
        csv.DictWriter(f, fieldnames=HEADER).writeheader()
    assert silicon.main([str(path)]) == 0

    def refuse(constant: str) -> None:
        raise ValueError(constant)

    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1], parse_constant=refuse)
    assert last["rows"] == 0 and last["ttft_median_ape"] is None and last["tpot_p90_ape"] is None


def test_main_counts_skipped_rows_with_their_reason(tmp_path: Path, capsys) -> None:
    rows = [
        row(batch_size="8", tp_size="2", silicon_data_source="silicon_concurrency=8"),
        row(model_path="nobody/unknown-model", batch_size="8", tp_size="2"),
        row(system="nonexistent_gpu", batch_size="8", tp_size="2"),
    ]
    rows[1:] = [{**r, "silicon_data_source": "silicon_concurrency=8"} for r in rows[1:]]
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


def test_a_row_that_hits_a_bug_is_counted_and_the_others_still_run(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """An unexpected exception in one row's simulation (a servesim bug) is that row's status,
    with its type and message, and the run goes on: a held-out file's other rows keep their
    figures and the last line stays JSON."""
    real = silicon.simulate_row

    def failing_on_osl_128(r, *args, **kw):
        if r.get("osl") == "128":
            raise ZeroDivisionError("float division by zero")
        return real(r, *args, **kw)

    monkeypatch.setattr(silicon, "simulate_row", failing_on_osl_128)
    source = "silicon_concurrency=8; " + AIPERF_SOURCE
    rows = [
        row(id="a", batch_size="8", tp_size="2", silicon_data_source=source),
        row(id="b", batch_size="8", tp_size="2", osl="128", silicon_data_source=source),
    ]
    path, out_path = tmp_path / "rows.csv", tmp_path / "out.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HEADER)
        w.writeheader()
        w.writerows(rows)
    assert silicon.main([str(path), "--rounds", "2", "--rows-out", str(out_path)]) == 0
    captured = capsys.readouterr()
    last = json.loads(captured.out.strip().splitlines()[-1])
    reason = "internal error (ZeroDivisionError: float division by zero)"
    assert last["rows"] == 1 and last["skipped_by_reason"] == {reason: 1}
    assert captured.err.strip() == f"b: {reason}; please report it."
    with open(out_path, newline="") as f:
        status = {r["id"]: r["status"] for r in csv.DictReader(f)}
    assert status == {"a": "ok", "b": reason}


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


DEV_CSV = REPO / "data" / "aic_e2e" / "silicon_sample_dev_more.csv"


# Two H100 rows and one H200 row of Llama-3.1-8B (aiperf runs) the report tests run for real.
H100_LLAMA8B_IDS = [
    f"meta_llama_llama_3_1_8b_instruct_meta_llama_llama_3_1_8b_instruct_h100_sxm_trtllm_agg_{x}"
    for x in ("1024x128_c8_tp1_epnone_1", "1024x128_c8_tp2_epnone_43")
]
H200_LLAMA8B_ID = (
    "meta_llama_llama_3_1_8b_instruct_meta_llama_llama_3_1_8b_instruct_h200_sxm_sglang"
    "_agg_1000x100_c160_tp1_epnone_1"
)


def _rows_by_id(path: Path, ids: list[str]) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        by_id = {r["id"]: r for r in csv.DictReader(f)}
    return [by_id[i] for i in ids]


def test_under_specified_rows_are_refused_with_their_reason() -> None:
    """A disaggregated row without worker counts, or a colocated row with more clients than
    batch slots and no replica count, is refused rather than simulated as 1 worker at batch 1;
    so is a row that does not state its client count."""
    stated = "silicon_concurrency=8"
    assert silicon.specified_or_reason(row(batch_size="8", tp_size="2")) == (
        "row states no client count (silicon_concurrency)"
    )
    assert (
        silicon.specified_or_reason(row(batch_size="8", tp_size="2", silicon_data_source=stated))
        == ""
    )
    over = row(batch_size="8", tp_size="2", silicon_data_source="silicon_concurrency=64")
    assert "concurrency above batch_size" in silicon.specified_or_reason(over)
    # Attention-DP ranks each hold batch_size slots: 8 × 8 = 64 clients fit.
    assert silicon.specified_or_reason({**over, "attention_dp_size": "8"}) == ""
    assert silicon.specified_or_reason(row(tp_size="2", silicon_data_source=stated)) == (
        "agg row without batch_size"
    )
    # aiconfigurator's own collection: Qwen3-32B on 2 GB200s, batch 256, no client count in
    # its provenance (its id reads `_c_`); the measured 54 s TTFT is not 256 clients' queue.
    (no_count,) = _rows_by_id(
        DEV_CSV, ["qwen3_32b_qwen3_32b_gb200_trtllm_agg_4000x1000_c_tp2_epnone_2"]
    )
    assert (
        silicon.specified_or_reason(no_count) == "row states no client count (silicon_concurrency)"
    )
    (unspecified,) = _rows_by_id(
        DEV_CSV,
        ["2026_03_25_deepseek_r1_h200_sxm_trtllm_fp8_disagg_1024x1024_c288_tp8_0_ep8_0_353"],
    )
    assert silicon.specified_or_reason(unspecified) == (
        "disagg row without worker counts or batch sizes"
    )
    full = row(
        mode="disagg",
        silicon_data_source="silicon_concurrency=48",
        prefill_batch_size="1",
        prefill_num_workers="3",
        prefill_tp_size="2",
        decode_batch_size="24",
        decode_num_workers="2",
        decode_tp_size="4",
    )
    assert silicon.specified_or_reason(full) == ""
    more = {**full, "silicon_data_source": "silicon_concurrency=49"}
    assert silicon.specified_or_reason(more) == (
        "disagg row with more clients than decode batch slots"
    )


def test_report_groups_and_skips_match_the_rows_out_file(tmp_path: Path, capsys) -> None:
    """On five real rows (two H100 and one H200 Llama-3.1-8B row predicted, two refused) the
    last line's counts, per-group and overall APEs equal those computed from `--rows-out`."""
    h100 = _rows_by_id(silicon.DEFAULT_CSV, H100_LLAMA8B_IDS)
    h200, disagg = _rows_by_id(
        DEV_CSV,
        [
            H200_LLAMA8B_ID,
            "2026_04_06_deepseek_r1_gb200_trtllm_fp4_disagg_1024x1024_c4_tp36_ep1_1079",
        ],
    )
    crowded = {**h200, "id": "crowded", "batch_size": "20"}  # 160 clients on 20 slots
    with open(DEV_CSV, newline="") as f:
        header = next(csv.reader(f))
    path, out_path = tmp_path / "rows.csv", tmp_path / "out.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows([*h100, disagg, h200, crowded])
    assert silicon.main([str(path), "--rounds", "2", "--rows-out", str(out_path)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with open(out_path, newline="") as f:
        out = list(csv.DictReader(f))
    assert [r["id"] for r in out] == [r["id"] for r in (*h100, disagg, h200, crowded)]
    assert [r["status"] for r in out][:2] == ["ok", "ok"] and out[3]["status"] == "ok"
    assert last["rows"] == 3 and last["skipped"] == 2 and last["predicted_fraction"] == 0.6
    assert last["skipped_by_reason"] == {
        # a December 2025 export whose tp 36 counts the whole deployment's GPUs, which an MTP
        # and a plain item both have at 4 clients
        "2 InferenceX configs match": 1,
        "agg row with concurrency above batch_size × attention_dp and no replica count": 1,
    }
    assert last["recovered_layouts"] == 0 and all(r["layout_source"] == "" for r in out)
    assert out[2]["predicted_ttft_ms"] == "" and float(out[2]["wall_s"]) >= 0.0
    assert float(out[0]["cpu_s"]) > 0.0 and last["slowest_row_cpu_s"] >= float(out[0]["cpu_s"])
    slow = sum(1 for r in out if float(r["wall_s"]) > silicon.ROW_GOAL_S)
    assert last["rows_over_goal_s"] == slow  # the rows-out file's own count
    timed = [{**r, "wall_s": w} for r, w in zip(out, (0.1, 2.5, 2.0, 9.0, 0.0), strict=True)]
    assert silicon.summary(timed)["rows_over_goal_s"] == 2  # 2.5 and 9.0 s; 2.0 s meets it

    def ape(r: dict[str, str], what: str) -> float:
        pred, meas = float(r[f"predicted_{what}_ms"]), float(r[f"measured_{what}_ms"])
        return 100.0 * abs(pred - meas) / meas

    assert float(out[0]["measured_ttft_ms"]) == float(h100[0]["silicon_ttft_ms"])
    a, b, c = out[0], out[1], out[3]
    h100_ttft = (ape(a, "ttft") + ape(b, "ttft")) / 2  # the median of two
    assert last["by_group"] == {
        "h100_sxm/agg": {
            "rows": 2,
            "ttft_median_ape": round(h100_ttft, 2),
            "tpot_median_ape": round((ape(a, "tpot") + ape(b, "tpot")) / 2, 2),
        },
        "h200_sxm/agg": {
            "rows": 1,
            "ttft_median_ape": round(ape(c, "ttft"), 2),
            "tpot_median_ape": round(ape(c, "tpot"), 2),
        },
    }
    assert last["ttft_median_ape"] == round(sorted(ape(r, "ttft") for r in (a, b, c))[1], 2)
    assert last["tpot_median_ape"] == round(sorted(ape(r, "tpot") for r in (a, b, c))[1], 2)

    # The signed median per engine and precision, from the same file: the sign survives.
    def signed(r: dict[str, str], what: str) -> float:
        return 100.0 * (float(r[f"predicted_{what}_ms"]) / float(r[f"measured_{what}_ms"]) - 1)

    # the H100 rows state no format (their checkpoints' bf16 runs); the H200 one says fp8
    assert [r["precision"] for r in (a, b, c)] == ["checkpoint", "checkpoint", "fp8"]
    assert h100[0]["precision"] == h100[0]["gemm_quant_mode"] == "" and h200["precision"] == "fp8"
    engines: dict[str, list[dict[str, str]]] = {}
    for r in (a, b, c):
        engines.setdefault(f"{r['backend']}/{r['precision']}", []).append(r)
    assert last["bias_by_engine"] == {
        g: {
            "rows": len(rs),
            "ttft_signed_median_pct": round(float(np.median([signed(r, "ttft") for r in rs])), 2),
            "tpot_signed_median_pct": round(float(np.median([signed(r, "tpot") for r in rs])), 2),
        }
        for g, rs in sorted(engines.items())
    }
    assert set(last["bias_by_engine"]) == {"trtllm/checkpoint", "sglang/fp8"}
    assert any(signed(r, "ttft") < 0 for r in (a, b, c))  # a lean the APE alone would hide


def test_dense_row_ignores_its_moe_columns() -> None:
    """The H100 file's dense rows carry moe_tp_size=1, moe_ep_size=1 beside tp=2: a dense model
    has no expert layers, so those columns must not refuse the row."""
    r = row(tp_size="2", moe_tp_size="1", moe_ep_size="1", batch_size="8")
    dep = silicon.deployment_of(r, Catalog())
    assert dep.parallel.tp == 2 and dep.parallel.ep == 1


def test_inferencex_sglang_rows_run_with_the_script_in_effect_on_their_day() -> None:
    """InferenceX's SGLang launches as its config table read them, by the day measured: from
    late February 2026 benchmarks/single_node/qwen3.5_fp8_b200.sh and dsr1_fp8_b200.sh receive
    every 10 decode steps below 16 clients and every 30 from 16 (dsr1_fp8_b200.sh: TP 4 always
    10, with its own budget and memory fraction), with 32,768-token chunks; the H200 scripts
    set no interval; and the first Qwen3.5 bf16 script (benchmarks/qwen3.5_bf16_b200.sh, 17–19
    February) passed only `--mem-fraction-static 0.8`, so its rows keep SGLang's defaults, until
    the script took the fp8 recipe's flags on 20 February (the config unchanged until the 23rd)."""
    ix = "db-dump/2026-04-27; config_id=1; silicon_concurrency={c}; measured={day}; {image}"
    v59, v56 = "lmsysorg/sglang:v0.5.9-cu130-amd64", "lmsysorg/sglang:v0.5.6-cu129-amd64"

    def dep(c: int, day: str = "2026-03-25", image: str = v59, **kw: str) -> Deployment:
        r = row(
            backend="sglang",
            model_path="Qwen/Qwen3.5-397B-A17B",
            system="b200_sxm",
            precision="fp8",
            gemm_quant_mode="fp8",
            moe_quant_mode="fp8_block",
            tp_size="8",
            isl="1024",
            osl="1024",
            silicon_data_source=ix.format(c=c, day=day, image=image),
        )
        r.update(kw)
        filled, source, refusal = silicon.single_node_config(r)
        assert refusal == "" and "MTP" not in source, (source, refusal)
        return silicon.deployment_of(filled, Catalog())

    qwen = dep(4)
    assert qwen.engine.recv_interval_steps == 10 and qwen.max_num_batched_tokens == 32768
    assert dep(64, tp_size="4").engine.recv_interval_steps == 30
    ds = {"model_path": "deepseek-ai/DeepSeek-R1", "day": "2026-03-10", "image": v56}
    assert dep(8, **ds).engine.recv_interval_steps == 10
    assert dep(32, **ds).engine.recv_interval_steps == 30
    tp4 = dep(16, isl="8192", tp_size="4", **ds)
    assert tp4.engine.recv_interval_steps == 10 and tp4.max_num_batched_tokens == 8192
    assert tp4.engine.mem_util == 0.95
    h200 = dict(ds, system="h200_sxm", image="lmsysorg/sglang:v0.5.9-cu129-amd64")
    assert dep(64, **h200).engine.recv_interval_steps == 1
    bf16 = {"precision": "bf16", "gemm_quant_mode": "bf16", "moe_quant_mode": "bf16"}
    nightly = "lmsysorg/sglang:nightly-dev-20260216-d3bae71e"
    early = dep(8, day="2026-02-18", image=nightly, **bf16)
    assert early.engine.recv_interval_steps == get_engine("sglang").recv_interval_steps == 1
    assert early.engine.mem_util == 0.8
    recipe = dep(8, day="2026-02-20", image=nightly, **bf16)
    assert (recipe.engine.recv_interval_steps, recipe.engine.mem_util) == (10, 0.82)
    assert recipe.max_num_batched_tokens == 32768 and recipe.max_num_seqs == 128


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
    assert silicon.inferencex_trtllm_launch(llama) == (16384, 20, 0.9, 0)
    assert silicon.inferencex_trtllm_launch({**llama, "osl": "8192"}) == (16384, 0, 0.0, 0)
    assert silicon.inferencex_trtllm_launch({**llama, "tp_size": "8"}) == (16384, 0, 0.0, 0)
    ds = row(
        model_path="deepseek-ai/DeepSeek-R1",
        system="b200_sxm",
        isl="1024",
        osl="1024",
        tp_size="8",
        gemm_quant_mode="fp8",
        silicon_data_source=ix.format(c=64),
    )
    assert silicon.inferencex_trtllm_launch(ds) == (8192, 40, 0.8, 0)
    # 256 + 8192 + 64 = 8512 → 8512 (a multiple of 64)
    ds8k = {**ds, "isl": "8192", "silicon_data_source": ix.format(c=256)}
    assert silicon.inferencex_trtllm_launch(ds8k) == (8512, 0, 0.0, 0)
    assert silicon.inferencex_trtllm_launch({**ds, "system": "h200_sxm"}) == (8192, 0, 0.0, 0)
    # Attention DP: no batch waiting, balancing with a 60-iteration timeout.
    assert silicon.inferencex_trtllm_launch({**ds, "attention_dp_size": "8"}) == (8192, 0, 0.0, 60)
    assert (
        silicon.inferencex_trtllm_launch({**ds, "silicon_data_source": "x-gap-analysis.csv"})
        is None
    )
    dep = silicon.deployment_of(llama, Catalog())
    assert dep.engine.batch_wait_timeout_iters == 20
    assert dep.max_num_batched_tokens == 16384


def test_inferencex_vllm_rows_get_the_llama_scripts_launch() -> None:
    """InferenceX's 2025 Llama-3.1-70B vLLM launches: 8,192-token budget, async scheduling, no
    prefix caching; B200 runs 512 sequences with prefill outside CUDA graphs
    (FULL_DECODE_ONLY) and vLLM's FlashInfer all-reduce fusion (inputs up to 32/32/8 MiB at
    TP 2/4/8), H200 and H100 CONC sequences with piecewise graphs up to 512 tokens and no
    fusion."""
    ix = "source_file=2026-04-06.csv; model=Llama-3.1-70B; silicon_concurrency={c}; measured=2025"
    llama = row(
        backend="vllm",
        model_path="meta-llama/Llama-3.1-70B",
        system="b200_sxm",
        isl="1024",
        osl="1024",
        tp_size="4",
        batch_size="",
        silicon_data_source=ix.format(c=16) + "-10-29T00:00:00.000Z; wip=False",
    )
    fusion = ((2, 32.0), (4, 32.0), (8, 8.0))
    assert silicon.inferencex_vllm_launch(llama) == (512, 8192, 0, fusion)
    h200 = {**llama, "system": "h200_sxm"}
    assert silicon.inferencex_vllm_launch(h200) == (16, 8192, None, None)  # vLLM's rule
    assert silicon.inferencex_vllm_launch({**llama, "backend": "sglang"}) is None
    aiperf = {**llama, "silicon_data_source": AIPERF_SOURCE}
    assert silicon.inferencex_vllm_launch(aiperf) is None
    dep = silicon.deployment_of(llama, Catalog())
    assert dep.engine.overlap_scheduling and not dep.engine.prefix_caching
    assert dep.engine.prefill_graph_max_tokens == 0
    assert (dep.max_num_seqs, dep.max_num_batched_tokens) == (512, 8192)
    assert (dep.engine.allreduce_norm_fusion, dep.engine.allreduce_fusion_max_mib) == (
        "vllm",
        fusion,
    )
    assert silicon.deployment_of(h200, Catalog()).engine.allreduce_norm_fusion == "none"


def test_inferencex_rows_before_the_search_space_get_their_scripts_layout() -> None:
    """Rows measured before InferenceX's search space (2025-11-03) ran the layout the launch
    script chose: dsr1 fp4 B200 TensorRT-LLM at TP 8 and 1k/1k takes EP 8 above 8 clients and
    attention DP from 256; fp8 H200 always EP = TP, DP above 64 clients (32 at 8k/1k); their
    token budget had no 8192 floor yet; no MTP then."""
    src = "db-dump/2026-04-27; config_id=91; silicon_concurrency={c}; measured=2025-11-02T00:00"
    fp4 = row(
        model_path="deepseek-ai/DeepSeek-R1",
        system="b200_sxm",
        precision="fp4",
        isl="1024",
        osl="1024",
        tp_size="8",
        attention_dp_size="1",
        moe_ep_size="1",
        silicon_data_source=src.format(c=8),
    )
    low = silicon.inferencex_2025_trt_layout(fp4)
    assert (low["tp_size"], low["attention_dp_size"], low["moe_ep_size"]) == ("8", "1", "1")
    mid = silicon.inferencex_2025_trt_layout({**fp4, "silicon_data_source": src.format(c=32)})
    assert (mid["tp_size"], mid["moe_ep_size"], mid["batch_size"]) == ("8", "8", "32")
    high = silicon.inferencex_2025_trt_layout({**fp4, "silicon_data_source": src.format(c=256)})
    assert (high["tp_size"], high["attention_dp_size"], high["batch_size"]) == ("1", "8", "32")
    h200 = {**fp4, "system": "h200_sxm", "precision": "fp8", "isl": "8192"}
    h = silicon.inferencex_2025_trt_layout({**h200, "silicon_data_source": src.format(c=32)})
    assert (h["attention_dp_size"], h["moe_ep_size"]) == ("1", "8")
    h = silicon.inferencex_2025_trt_layout({**h200, "silicon_data_source": src.format(c=64)})
    assert h["attention_dp_size"] == "8"
    later = {**fp4, "silicon_data_source": src.format(c=8).replace("2025-11-02", "2025-11-10")}
    assert silicon.inferencex_2025_trt_layout(later) is None
    # 32 + 1024 + 64 = 1120, rounded up to 64 tokens: 1152 (no 8192 floor)
    assert silicon.inferencex_trtllm_launch(mid)[0] == 1152
    filled, where, refusal = silicon.single_node_config(mid, table=())
    assert refusal == "" and "before the search space" in where and filled["moe_ep_size"] == "8"


def test_aiconfigurator_sglang_rows_mix_prefill_chunks_from_the_fixed_generator_on() -> None:
    """aiconfigurator's SGLang rule asks for --enable-mixed-chunk on colocated workers; the
    generator emits it from 2026-01-19, which every SGLang 0.5.6.post2+ template post-dates."""
    src = "source_file=/x/aic-auto-gap-analysis/data/h100_sxm/sglang/0.5.8/q.csv"
    new = row(backend="sglang", backend_version="0.5.8.post1", silicon_data_source=src)
    new.update(tp_size="2", batch_size="8")
    old = {**new, "backend_version": "0.5.1.post1"}
    assert silicon.aiconfigurator_mixed_chunk(new)
    assert not silicon.aiconfigurator_mixed_chunk(old)
    assert silicon.deployment_of(new, Catalog()).engine.mixed_batches
    assert not silicon.deployment_of(old, Catalog()).engine.mixed_batches  # SGLang's default
    # InferenceX rows (their own launch scripts) and other engines are untouched.
    ix = {**new, "silicon_data_source": "db-dump/2026-04-27; measured=2026-02-01T00:00:00Z"}
    assert not silicon.aiconfigurator_mixed_chunk(ix)
    assert not silicon.aiconfigurator_mixed_chunk({**new, "backend": "vllm"})


def test_vllm_rows_get_aiconfigurators_batch_and_token_budget() -> None:
    """vllm.rule: colocated/decode batches raised to 512 (twice the batch from 512 on) and
    --max-num-batched-tokens = that batch + ISL + 1500 colocated, ISL + 1500 prefill."""
    agg = silicon.batching_of("vllm", "agg", 64, 4096)
    assert agg == {"max_num_seqs": 512, "max_num_batched_tokens": 512 + 4096 + 1500}
    big = silicon.batching_of("vllm", "agg", 600, 1000, dp=2)
    assert big == {"max_num_seqs": 2400, "max_num_batched_tokens": 2 * (1200 + 1000 + 1500)}
    assert silicon.batching_of("vllm", "prefill", 1, 8192)["max_num_batched_tokens"] == 9692
    assert silicon.batching_of("vllm", "decode", 64, 8192)["max_num_batched_tokens"] == 512
    # --vllm-budget overrides the rule.
    assert silicon.batching_of("vllm", "agg", 64, 4096, 8192)["max_num_batched_tokens"] == 8192


def _deepseek_b200_row(quant: str) -> dict[str, str]:
    """An InferenceX DeepSeek-R1 row on B200 at TP 4 with `quant` weights and experts."""
    return row(
        model_path="deepseek-ai/DeepSeek-R1",
        system="b200_sxm",
        tp_size="4",
        gemm_quant_mode=quant,
        moe_quant_mode=quant,
        silicon_data_source=INFERENCEX_SOURCE,
    )


def test_inferencex_rows_cache_kv_in_the_format_their_launch_sets() -> None:
    """InferenceX's launches: TensorRT-LLM and vLLM Llama-3.1-70B cache in fp8 whatever the
    weights, SGLang DeepSeek in fp8 on B200 and bf16 on H200, Qwen3.5 as its weights; an fp4
    row no longer caches in bf16, and aiperf rows keep the weight rule."""
    ds = _deepseek_b200_row("fp4")
    assert silicon.inferencex_kv_dtype(ds) == "fp8"
    assert silicon._model(ds).kv_dtype == "fp8"
    assert silicon.inferencex_kv_dtype({**ds, "backend": "sglang"}) == "fp8"
    h200 = {**ds, "backend": "sglang", "system": "h200_sxm", "gemm_quant_mode": "fp8"}
    assert silicon.inferencex_kv_dtype(h200) == "bf16"
    assert silicon._model(h200).kv_dtype == "bf16"
    llama = {**ds, "backend": "vllm", "model_path": "meta-llama/Llama-3.1-70B"}
    assert silicon._model(llama).kv_dtype == "fp8"
    qwen = {**ds, "backend": "sglang", "model_path": "Qwen/Qwen3.5-397B-A17B"}
    assert silicon.inferencex_kv_dtype({**qwen, "gemm_quant_mode": "bf16"}) == "bf16"
    assert silicon.inferencex_kv_dtype({**qwen, "gemm_quant_mode": "fp8"}) == "fp8"
    aiperf = {**ds, "silicon_data_source": AIPERF_SOURCE}
    assert silicon.inferencex_kv_dtype(aiperf) is None
    assert silicon._model(aiperf).kv_dtype == "bf16"
    assert silicon.inferencex_kv_dtype({**ds, "mode": "disagg"}) is None


def test_a_deepseek_fp4_row_runs_nvidia_s_nvfp4_release() -> None:
    """A DeepSeek row that names the base model and NVFP4 ran NVIDIA's NVFP4 release (its MLA
    input projections and MTP layer bf16, the rest, o_proj included, NVFP4), as does a row that
    names the release itself; a Llama-3.1-70B NVFP4 row takes NVFP4 throughout."""
    ds = _deepseek_b200_row("nvfp4")
    formats = ("weight_dtype", "expert_dtype", "attn_weight_dtype", "attn_out_weight_dtype")
    want = ("fp4", "fp4", "bf16", "fp4")
    for model_path in (
        "deepseek-ai/DeepSeek-R1",
        "deepseek-ai/DeepSeek-V3",
        "nvidia/DeepSeek-R1-NVFP4",
    ):
        m = silicon._model({**ds, "model_path": model_path})
        assert tuple(getattr(m, f) for f in formats) == want, model_path
        assert (m.mtp_dtype, m.fp8_block, m.kv_dtype) == ("bf16", False, "fp8")
    llama = silicon._model({**ds, "model_path": "meta-llama/Llama-3.1-70B"})
    assert tuple(getattr(llama, f) for f in formats) == ("fp4", "fp4", "fp4", "fp4")
    # Kimi-K2.5: an FP4 row of the base path ran nvidia/Kimi-K2.5-NVFP4 (its attention bf16;
    # the KV cache as the launch sets it), an INT4 row the base checkpoint's own INT4 experts
    base = silicon._model({**ds, "model_path": "moonshotai/Kimi-K2.5"})
    release = silicon._model({**ds, "model_path": "nvidia/Kimi-K2.5-NVFP4"})
    for kimi in (base, release):
        assert tuple(getattr(kimi, f) for f in formats) == ("fp4", "fp4", "bf16", "bf16")
    int4 = {"gemm_quant_mode": "int4", "moe_quant_mode": "int4", "precision": "int4"}
    kimi = silicon._model({**ds, "model_path": "moonshotai/Kimi-K2.5", **int4})
    assert (kimi.expert_dtype, kimi.attn_weight_dtype) == ("int4", "bf16")
    # the fp8 rows of the base model keep its own block-scaled fp8 checkpoint
    fp8 = silicon._model({**ds, "gemm_quant_mode": "fp8_block", "moe_quant_mode": "fp8_block"})
    assert (fp8.weight_dtype, fp8.attn_out_weight_dtype, fp8.fp8_block) == ("fp8", "fp8", True)


def test_inferencex_llama_fp8_rows_run_a_static_scale_checkpoint() -> None:
    """InferenceX serves nvidia/Llama-3.3-70B-Instruct-FP8 (ModelOpt, calibrated input
    scales) for its Llama FP8 rows; aiconfigurator's own rows say `fp8_static` when they mean
    it, so their `fp8` is dynamic; DeepSeek's fp8 is block-scaled and dynamic."""
    llama = row(
        model_path="meta-llama/Llama-3.1-70B",
        system="b200_sxm",
        backend="trtllm",
        tp_size="4",
        gemm_quant_mode="fp8",
        silicon_data_source=INFERENCEX_SOURCE,
    )
    assert silicon._model(llama).fp8_static_act
    aiperf = {**llama, "silicon_data_source": AIPERF_SOURCE}
    assert not silicon._model(aiperf).fp8_static_act
    assert silicon._model({**aiperf, "gemm_quant_mode": "fp8_static"}).fp8_static_act
    ds = {**llama, "model_path": "deepseek-ai/DeepSeek-R1", "moe_quant_mode": "fp8"}
    assert not silicon._model(ds).fp8_static_act


def test_every_aiconfigurator_quant_mode_is_one_servesim_prices() -> None:
    """Held-out rows may name any of aiconfigurator's GEMM and MoE quantisation modes (e.g.
    gpt-oss's `w4a8_mxfp4_mxfp8` on Blackwell); each maps to a weight format a model accepts,
    read from the installed package's own enums."""
    from aiconfigurator_core.sdk.common import GEMMQuantMode, MoEQuantMode

    model = load_model("openai/gpt-oss-120b")
    for mode in [*GEMMQuantMode, *MoEQuantMode]:
        fmt = silicon.QUANT.get(mode.name, mode.name)
        model.with_dtypes(weight=fmt, expert=fmt)  # raises for a format servesim lacks
    assert silicon.QUANT["w4a8_mxfp4_mxfp8"] == "mxfp4"
    assert silicon.QUANT["nvfp4_wo"] == "mxfp4"  # W4A16: not the FP4 tensor-core rate
    # every MXFP4 MoE mode names the activation format its run quantised to
    mxfp4 = [m.name for m in MoEQuantMode if "mxfp4" in m.name]
    assert mxfp4 and all(m in silicon.MXFP4_ACTIVATION for m in mxfp4)


def test_an_mxfp4_row_runs_the_activation_format_its_moe_mode_names() -> None:
    """aiconfigurator's gpt-oss rows say whether the experts ran W4A8 (MXFP8 activations) or
    W4A16; the engine prices that kernel, and a row that does not say keeps the engine's own
    choice on the GPU."""
    cat = Catalog()
    base = dict(model_path="openai/gpt-oss-120b", system="b200_sxm", backend="vllm", tp_size="1")
    for mode, act in (("w4a8_mxfp4_mxfp8", "mxfp8"), ("w4a16_mxfp4", "bf16"), ("", "auto")):
        dep = silicon.deployment_of(row(**base, moe_quant_mode=mode, batch_size="8"), cat)
        assert dep.engine.mxfp4_activation == act


def test_an_inferencex_gpt_oss_row_runs_the_kernel_its_engine_picks() -> None:
    """An InferenceX export's MoE mode labels the checkpoint, not the kernel: TensorRT-LLM on
    a B200 runs gpt-oss's MXFP4 experts W4A8 (`get_mxfp4_quant_algo`: MXFP8 activations from
    SM 100), whatever the column says, and the step is priced by that kernel (W4A16 would price
    a 64-sequence decode step ~3x longer). aiconfigurator's own rows keep their mode's kernel."""
    cat = Catalog()
    src = (
        "source_file=2025-11-03.csv; model=gpt-oss-120b; silicon_concurrency=64; "
        "measured=2025-11-03T12:00:00Z; wip=False; "
        "image=nvcr.io#nvidia/tensorrt-llm/release:1.2.0rc0.post1"
    )
    kw = dict(
        model_path="openai/gpt-oss-120b", system="b200_sxm", backend="trtllm", tp_size="1",
        precision="fp4", gemm_quant_mode="bfloat16", moe_quant_mode="w4a16_mxfp4",
        batch_size="64", isl="1024", osl="1024",
    )  # fmt: skip
    ix = silicon.deployment_of(row(**kw, silicon_data_source=src), cat)
    own = silicon.deployment_of(row(**kw, silicon_data_source="silicon_concurrency=64"), cat)
    assert silicon.protocol_of(row(silicon_data_source=src)) is not silicon.AIPERF
    assert ix.engine.mxfp4_activation == "auto" and own.engine.mxfp4_activation == "bf16"
    step = {n: d.predictor().iteration(BatchShape(64, 64 * 1500)).seconds
            for n, d in (("ix", ix), ("own", own))}  # fmt: skip
    assert step["own"] > 2.5 * step["ix"]


def test_a_row_that_names_a_checkpoints_own_expert_format_runs_that_checkpoint() -> None:
    """gpt-oss ships MXFP4 experts and bf16 attention, Kimi-K2.5 INT4 experts: those
    checkpoints are the models' FP4 and INT4 releases, so a row saying `fp4`/`nvfp4` or `int4`
    of them (InferenceX's precision, a generic export's modes) keeps the checkpoint's formats
    instead of pricing the attention as 4-bit GEMMs; a bf16 checkpoint still takes the row's
    format."""
    cat = Catalog()
    base = dict(system="b200_sxm", backend="vllm", tp_size="1", batch_size="8", precision="fp4")
    for g, mo in (("nvfp4", "nvfp4"), ("", ""), ("bfloat16", "w4a16_mxfp4")):
        dep = silicon.deployment_of(
            row(**base, model_path="openai/gpt-oss-120b", gemm_quant_mode=g, moe_quant_mode=mo),
            cat,
        )
        assert (dep.model.weight_dtype, dep.model.expert_dtype) == ("bf16", "mxfp4")
    kimi = dict(base, precision="int4", tp_size="8", model_path="moonshotai/Kimi-K2.5")
    for g, mo in (("int4", "int4"), ("", ""), ("int4_wo", "int4_wo")):
        dep = silicon.deployment_of(row(**kimi, gemm_quant_mode=g, moe_quant_mode=mo), cat)
        assert (dep.model.weight_dtype, dep.model.expert_dtype) == ("bf16", "int4")
    llama = silicon.deployment_of(
        row(**base, model_path="meta-llama/Llama-3.1-70B", gemm_quant_mode="nvfp4"), cat
    )
    assert llama.model.weight_dtype == "fp4"


def test_launch_ssm_dtype_reaches_the_model() -> None:
    """InferenceX's qwen3.5_fp8_b200.sh passes `--mamba-ssm-dtype bfloat16` (since a02210c17):
    the matched config carries it and the simulated model keeps its Gated DeltaNet state in
    bf16, half the checkpoint's fp32 state a sequence; a model without linear layers and a row
    without the setting keep theirs."""
    (row,) = _rows_by_id(DEV_CSV, ["qwen3_5_b200_sglang_fp8_agg_1024x1024_c4_cfg618"])
    filled, _, refusal = silicon.single_node_config(row)
    assert refusal == "" and filled["launch_ssm_dtype"] == "bfloat16"
    assert silicon.script_launch(filled)["ssm_dtype"] == "bfloat16"
    model = silicon._model(filled)
    base = load_model("Qwen/Qwen3.5-397B-A17B")
    assert (base.state_dtype, model.state_dtype) == ("fp32", "bf16")
    ssm, _ = base.state_values_per_layer()
    saved = base.num_linear_layers * ssm * 2  # 4 → 2 bytes a recurrent-state value
    assert base.state_bytes_per_seq() - model.state_bytes_per_seq() == pytest.approx(saved)
    unset = {k: v for k, v in filled.items() if k != "launch_ssm_dtype"}
    assert "ssm_dtype" not in silicon.script_launch(unset)
    assert silicon._model(unset).state_dtype == "fp32"


def test_a_repeated_run_takes_the_first_ones_figures(monkeypatch) -> None:
    """Two rows that describe the same deployment and client (a measurement exported on two
    days) are simulated once; a row that differs in anything the simulation reads is not."""
    calls: list[int] = []
    real = silicon.simulate

    def counting(dep, **kw):
        calls.append(1)
        return real(dep, **kw)

    monkeypatch.setattr(silicon, "simulate", counting)
    monkeypatch.setattr(silicon, "_RUNS", {})
    base = row(
        batch_size="8", tp_size="2", silicon_data_source="silicon_concurrency=4; " + AIPERF_SOURCE
    )
    first = silicon.simulate_row(base, Catalog(), rounds=2)
    twin = silicon.simulate_row({**base, "id": "twin"}, Catalog(), rounds=2)
    assert twin == first and len(calls) == 1
    other = silicon.simulate_row({**base, "osl": "128"}, Catalog(), rounds=2)
    assert len(calls) == 2 and other != first


def test_a_memory_fraction_that_cannot_matter_does_not_split_repeated_runs() -> None:
    """A closed loop keeps at most `clients` requests in the system, so a pool whose KV cache
    holds them all at their longest never runs short: runs that differ only in its memory
    fraction share one key (and one simulation). Where the cache can fill, they do not."""
    from dataclasses import replace

    from servesim.sim.synthetic import ClosedLoop, Fixed

    model = load_model("meta-llama/Llama-3.1-8B")
    h100 = Catalog().get("h100_sxm")
    dep = Deployment(model, h100, Parallel(tp=1), get_engine("vllm"))
    lower = replace(dep, engine=replace(dep.engine, mem_util=0.5))
    assert lower.memory().kv_tokens < dep.memory().kv_tokens  # the fraction sizes the cache
    few = ClosedLoop(4, 40, Fixed(1024), Fixed(128))
    assert silicon._run_key(dep, few, 8) == silicon._run_key(lower, few, 8)
    # 4 clients × (1,024 + 128 + 1,024 slack) × 1.1 tokens fit either cache; 200 clients of
    # 8,192-token prompts (2.0 M tokens) fit neither, so the fraction matters.
    many = ClosedLoop(200, 400, Fixed(8192), Fixed(128))
    assert lower.memory().kv_tokens < 200 * (8192 + 128)
    assert silicon._run_key(dep, many, 8) != silicon._run_key(lower, many, 8)
    # A disaggregated deployment: each pool is judged alone.
    disagg = DisaggDeployment(prefill=dep, decode=dep)
    other = DisaggDeployment(prefill=lower, decode=dep)
    assert silicon._run_key(disagg, few, 8) == silicon._run_key(other, few, 8)


def test_malformed_rows_are_refused_with_the_column_and_spellings_agree(
    tmp_path: Path, capsys
) -> None:
    """A bad value is the row's refusal, never a crash of the whole run: a count column that
    is not a number names the column, `nan` reads as not stated, a measured figure that is
    missing or 0 cannot be scored. The same run spelled `1024.0` or with a GPU alias (`h100`)
    predicts the same figures as its canonical spelling."""
    ok = dict(batch_size="8", tp_size="2", silicon_data_source="silicon_concurrency=8")
    rows = [
        row(id="plain", **ok),
        row(id="floaty", **{**ok, "isl": "4096.0", "batch_size": "8.0"}, system="h100"),
        row(id="garbage", **{**ok, "tp_size": "two"}),
        row(id="nan_tp", **{**ok, "tp_size": "nan"}),
        row(id="no_tpot", **ok, silicon_tpot_ms=""),
        row(id="zero_ttft", **ok, silicon_ttft_ms="0"),
    ]
    path, out_csv = tmp_path / "rows.csv", tmp_path / "out.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HEADER)
        w.writeheader()
        w.writerows(rows)
    assert silicon.main([str(path), "--rows-out", str(out_csv)]) == 0
    with open(out_csv, newline="") as f:
        got = {r["id"]: r for r in csv.DictReader(f)}
    assert got["plain"]["status"] == got["floaty"]["status"] == "ok"
    for key in ("predicted_ttft_ms", "predicted_tpot_ms"):
        assert got["floaty"][key] == got["plain"][key]
    assert got["garbage"]["status"] == "column tp_size holds 'two', not a number"
    assert got["nan_tp"]["status"] == "agg row without tp_size"
    assert (
        got["no_tpot"]["status"]
        == "row without a positive measured silicon_tpot_ms to score against"
    )
    assert got["zero_ttft"]["status"].startswith("row without a positive measured silicon_ttft_ms")
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == 2


def test_a_file_that_is_not_a_silicon_csv_is_one_sentence_and_exit_2(
    tmp_path: Path, capsys
) -> None:
    assert silicon.main([str(tmp_path / "missing.csv")]) == 2
    assert "cannot read" in capsys.readouterr().out
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    assert silicon.main([str(other)]) == 2
    out = capsys.readouterr().out
    assert "lacks the column(s) id, silicon_data_source" in out and "Traceback" not in out


def test_a_bad_rows_out_path_is_refused_before_the_run(tmp_path: Path, capsys) -> None:
    """`--rows-out` is checked before any row is simulated (a folder is refused at once, not
    after minutes of work), and a file under folders that do not exist yet gets them."""
    from servesim.errors import ServesimError

    csv_path = REPO / "data" / "aic_e2e" / "silicon_sample_h100_dense_agg.csv"
    with pytest.raises(ServesimError, match=r"--rows-out .* is a folder"):
        silicon.main([str(csv_path), "--rows-out", str(tmp_path)])
    assert "simulated" not in capsys.readouterr().out  # nothing ran
    nested = tmp_path / "new" / "rows.csv"
    assert silicon.main([str(csv_path), "--limit", "1", "--rows-out", str(nested)]) == 0
    with open(nested, newline="") as f:
        assert len(list(csv.DictReader(f))) == 1


def test_several_files_run_as_one_set_and_each_row_as_in_its_own_file(
    tmp_path: Path, capsys
) -> None:
    """Issue 12's goals count the two dev files together: `silicon.py A B` predicts every row
    of both exactly as the two single-file runs do, its figures cover all rows, `by_file` gives
    each file's own, and rows-out names each row's file. Two rows with one id (the files are
    separate samples) both stay. A second file that cannot be read stops the run before any
    row is simulated, in one sentence naming it; so does a file given twice."""
    h100 = _rows_by_id(silicon.DEFAULT_CSV, H100_LLAMA8B_IDS)
    h200 = _rows_by_id(DEV_CSV, [H200_LLAMA8B_ID])
    refused = {**h200[0], "batch_size": "20"}  # 160 clients on 20 slots, same id
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for path, rows in ((a, h100), (b, [*h200, refused])):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=HEADER)
            w.writeheader()
            w.writerows(rows)

    def run(*paths: Path) -> tuple[dict, list[dict[str, str]]]:
        out_csv = tmp_path / "out.csv"
        assert silicon.main([*map(str, paths), "--rows-out", str(out_csv)]) == 0
        last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        with open(out_csv, newline="") as f:
            return last, list(csv.DictReader(f))

    alone_a, rows_a = run(a)
    alone_b, rows_b = run(b)
    both, rows_ab = run(a, b)
    strip = ("wall_s", "cpu_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows_ab] == [
        {k: v for k, v in r.items() if k not in strip} for r in (*rows_a, *rows_b)
    ]
    assert [r["file"] for r in rows_ab] == [str(a), str(a), str(b), str(b)]
    assert both["rows"] == 3 and both["skipped"] == 1 and both["predicted_fraction"] == 0.75
    assert "by_file" not in alone_a
    keys = ("rows", "skipped", "ttft_median_ape", "tpot_median_ape")
    assert both["by_file"] == {
        str(a): {k: alone_a[k] for k in keys},
        str(b): {k: alone_b[k] for k in keys},
    }
    assert both["by_group"]["h100_sxm/agg"] == alone_a["by_group"]["h100_sxm/agg"]

    assert silicon.main([str(a), str(tmp_path / "missing.csv")]) == 2
    out = capsys.readouterr().out
    assert "cannot read" in out and "missing.csv" in out and "simulated" not in out
    again = f"{tmp_path}/./a.csv"  # the same file under another spelling
    assert silicon.main([str(a), str(b), again]) == 2  # its rows would count twice
    out = capsys.readouterr().out
    assert f"{a}, {again} given more than once" in out and "simulated" not in out


def test_goal_misses_name_each_of_issue_12s_goals_a_run_misses() -> None:
    """The goals line: overall medians against 15 % / 8 %, groups of 20 rows or more against
    25 % / 12 % (a smaller group is not judged), 90 % of rows predicted, no row over 2 s."""
    stats = {
        "rows": 90,
        "ttft_median_ape": 15.0,  # on the bound: met
        "tpot_median_ape": 8.01,
        "by_group": {
            "b200_sxm/agg": {"rows": 20, "ttft_median_ape": 25.5, "tpot_median_ape": 12.0},
            "h100_sxm/disagg": {"rows": 19, "ttft_median_ape": 90.0, "tpot_median_ape": 40.0},
        },
        "predicted_fraction": 0.8999,
        "rows_over_goal_s": 3,
    }
    assert silicon.goal_misses(stats) == [
        "TPOT median APE 8.01 % > 8 %",
        "b200_sxm/agg TTFT 25.5 % > 25 %",
        "89.99 % of rows predicted < 90 %",
        "3 row(s) over 2 s",
    ]
    met = {**stats, "tpot_median_ape": 8.0, "predicted_fraction": 0.9, "rows_over_goal_s": 0}
    met["by_group"] = {"b200_sxm/agg": {"rows": 20, "ttft_median_ape": 25, "tpot_median_ape": 12}}
    assert silicon.goal_misses(met) == []
    assert silicon.goal_misses({**met, "rows": 0}) == ["no row predicted"]


def test_only_runs_the_named_rows_as_the_whole_file_predicts_them(tmp_path: Path, capsys) -> None:
    """`--only ID` runs just that row, with the figures the run over the whole file gives it;
    an id the file does not hold is one sentence and exit 2, before anything runs."""
    source = "silicon_concurrency=8; " + AIPERF_SOURCE
    rows = [
        row(id="a", batch_size="8", tp_size="2", silicon_data_source=source),
        row(id="b", batch_size="8", tp_size="2", osl="128", silicon_data_source=source),
    ]
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HEADER)
        w.writeheader()
        w.writerows(rows)

    def predicted(*extra: str) -> dict[str, tuple[str, str]]:
        out = tmp_path / "out.csv"
        assert silicon.main([str(path), "--rounds", "2", "--rows-out", str(out), *extra]) == 0
        with open(out, newline="") as f:
            return {
                r["id"]: (r["predicted_ttft_ms"], r["predicted_tpot_ms"]) for r in csv.DictReader(f)
            }

    whole = predicted()
    assert set(whole) == {"a", "b"}
    assert predicted("--only", "b") == {"b": whole["b"]}
    assert predicted("--only", "b", "--only", "a") == whole
    capsys.readouterr()
    assert silicon.main([str(path), "--only", "c"]) == 2
    out = capsys.readouterr().out
    assert out.strip() == "error: no row has id c; check the id against the file."

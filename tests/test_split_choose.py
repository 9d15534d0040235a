"""`servesim split` (ParetoPipe/ED-ViT pipeline splits, TPI-LLM sliding window) and `servesim
choose` (budgets, quality per joule, Nemotron-Flash's depth finding, the roofline scaling law)."""

from __future__ import annotations

import json

import pytest

from servesim.cli import main as cli
from servesim.errors import ServesimError
from servesim.planner import choose as ch
from servesim.planner import split as sp
from servesim.predictor import device_step as ds
from servesim.spec.devices import get_device
from servesim.spec.links import get_link
from servesim.spec.model import ModelSpec, load_model
from servesim.spec.quant import get_quant

Q4 = get_quant("q4_k_m")


def test_all_splits_are_every_composition() -> None:
    splits = sp.all_splits(5, 3)
    assert len(splits) == 21  # C(5 + 2, 2)
    assert all(sum(s) == 5 and len(s) == 3 for s in splits) and len(set(splits)) == 21


def test_split_latency_and_throughput_by_hand(llama8) -> None:
    devs = [get_device("jetson_orin_nano"), get_device("rtx_4090")]
    link = get_link("1gbe")
    s = sp.evaluate_split(llama8, Q4, devs, link, (12, 20), context=512)
    step = ds.decode(1, 512)
    a = ds.time_work(ds.layers_work(llama8, Q4, range(12), step), devs[0], Q4).seconds
    work_b = ds.layers_work(llama8, Q4, range(12, 32), step) + ds.head_work(llama8, Q4, step)
    b = ds.time_work(work_b, devs[1], Q4).seconds
    hop = link.transfer_s(llama8.hidden_size * ds.ACT_BYTES)
    assert s.latency_s == pytest.approx(a + b + hop)
    assert s.tokens_per_s == pytest.approx(1 / max(a, b, hop))
    with pytest.raises(ServesimError, match="summing to 32"):
        sp.evaluate_split(llama8, Q4, devs, link, (12, 12))


def test_pareto_front_ends_are_the_latency_and_throughput_optima(llama8) -> None:
    devs = [get_device(n) for n in ("jetson_orin_nano", "phone", "rtx_4090")]
    splits = sp.search_splits(llama8, Q4, devs, get_link("1gbe"), context=1024)
    front = sp.pareto_front(splits)
    assert len(front) >= 3
    assert front[0].latency_s == min(s.latency_s for s in splits)
    assert front[-1].tokens_per_s == max(s.tokens_per_s for s in splits)
    lat = [s.latency_s for s in front]
    tput = [s.tokens_per_s for s in front]
    assert lat == sorted(lat) and tput == sorted(tput)  # trading latency for throughput
    for s in splits:  # every split off the front is dominated by one on it
        if s not in front:
            assert any(
                f.latency_s <= s.latency_s and f.tokens_per_s >= s.tokens_per_s for f in front
            )
    for s in front:
        assert all(m <= d.mem_bytes for m, d in zip(s.mem_bytes, devs, strict=True))


def test_any_order_search_covers_every_order(llama8) -> None:
    devs = [get_device(n) for n in ("rtx_4090", "jetson_orin_nano")]
    link = get_link("1gbe")
    given = sp.search_splits(llama8, Q4, devs, link)
    anyo = sp.search_splits(llama8, Q4, devs, link, any_order=True)
    # 33 splits per order, the two all-on-one-device splits shared: 2 x 33 - 2
    assert len(anyo) == 64 and len(given) == 33
    assert {s.devices for s in anyo} == {
        ("rtx_4090", "jetson_orin_nano"),
        ("jetson_orin_nano", "rtx_4090"),
    }
    front = sp.pareto_front(anyo)
    assert front[0].latency_s == min(s.latency_s for s in anyo)
    assert front[-1].tokens_per_s == max(s.tokens_per_s for s in anyo)
    assert max(s.tokens_per_s for s in anyo) >= max(s.tokens_per_s for s in given)


def test_tpi_llm_sliding_window_runs_a_model_larger_than_each_device() -> None:
    m = load_model("meta-llama/Meta-Llama-3.1-70B")
    dev = get_device("jetson_orin_nano")  # 8 GB
    link, disk = get_link("1gbe"), get_link("nvme_gen4")
    full = sp.tensor_parallel(m, Q4, dev, 4, link, disk, window=0, context=512)
    slid = sp.tensor_parallel(m, Q4, dev, 4, link, disk, window=4, context=512)
    assert full.model_bytes > dev.mem_bytes * 4  # bigger than all four devices together
    assert full.mem_bytes_per_device > dev.mem_bytes  # without the window it does not fit
    assert slid.mem_bytes_per_device < dev.mem_bytes  # with it, it does
    # the latency cost it predicts: each layer waits for its shard's read when that is longer
    extra = 0.0
    for i in range(m.num_layers):
        shard = sp.layers_work(m, Q4, range(i, i + 1), ds.decode(1, 512))
        c = ds.time_work(
            ds.Work(
                {k: v / 4 for k, v in shard.flops.items()},
                shard.weight_bytes / 4,
                shard.other_bytes / 4,
                shard.attn_flops / 4,
                shard.ops,
            ),
            dev,
            Q4,
            step_overhead=False,
        ).seconds
        read = disk.transfer_s(ds.layer_weight_bytes(m, Q4, i) / 4)
        ar = 2 * (
            2 * link.latency_s + 2 * m.hidden_size * ds.ACT_BYTES * 3 / 4 / link.bw_bytes_per_s
        )
        extra += max(0.0, read - (c + ar))
    assert slid.latency_s - full.latency_s == pytest.approx(extra, rel=1e-9)
    assert slid.latency_s > full.latency_s
    assert slid.load_s >= full.model_bytes * 0.9 / 4 / disk.bw_bytes_per_s


def _equal_size_pair() -> tuple[ModelSpec, ModelSpec]:
    # same non-embedding parameters: 32 x 1024^2 = 8 x 2048^2 (per-layer params scale as h^2)
    deep = ModelSpec("deep", "llama", 32, 1024, 8, 8, 128, 4096, 32000)
    wide = ModelSpec("wide", "llama", 8, 2048, 16, 16, 128, 8192, 32000)
    return deep, wide


def test_nemotron_flash_depth_costs_more_than_width_at_small_batch() -> None:
    deep, wide = _equal_size_pair()
    assert deep.num_params() - deep.param_counts()["embedding"] == pytest.approx(
        wide.num_params() - wide.param_counts()["embedding"], rel=0.01
    )
    gpu = get_device("rtx_4090")
    t = {m.name: ds.step_time(m, Q4, gpu, ds.decode(1, 512)).seconds for m in (deep, wide)}
    assert t["deep"] > 1.3 * t["wide"]
    # the gap is the per-layer fixed cost of 24 extra layers
    gap = (32 - 8) * ds.OPS_PER_LAYER * ds.default_efficiency(gpu).op_s
    assert t["deep"] - t["wide"] == pytest.approx(gap, rel=0.15)
    # at a large batch the fixed costs are amortised: the ratio shrinks towards 1
    big = {m.name: ds.step_time(m, Q4, gpu, ds.decode(256, 512)).seconds for m in (deep, wide)}
    assert big["deep"] / big["wide"] < t["deep"] / t["wide"]


def test_latency_optimal_size_follows_bandwidth() -> None:
    grid = [10 ** (8 + i / 24) for i in range(0, 80)]
    n = {
        d: ch.latency_optimal_size(get_device(d), Q4, 0.02, sizes=grid)
        for d in ("phone", "rtx_4090", "rtx_5090")
    }
    assert n["phone"] < n["rtx_4090"] < n["rtx_5090"]
    bw = get_device("rtx_5090").mem_bw_bytes_per_s / get_device("rtx_4090").mem_bw_bytes_per_s
    assert n["rtx_5090"] / n["rtx_4090"] == pytest.approx(bw, rel=0.25)
    # a looser budget buys a bigger model until memory, not latency, binds (24 GB of Q4_K_M)
    roomy = ch.latency_optimal_size(get_device("rtx_4090"), Q4, 1.0, sizes=grid)
    assert 25e9 < roomy < 40e9  # Q4_K_M at ~4.9 bits: 21.6 GB usable holds ~35B at most


def test_choose_budgets_quality_and_front(tmp_path, llama8) -> None:
    qfile = tmp_path / "q.csv"
    qfile.write_text("model,score\nMeta-Llama-3.1-8B,66.7\nQwen/Qwen3-32B,83.0\n")
    quality = ch.read_quality(qfile)
    models = [llama8, load_model("Qwen/Qwen3-32B")]
    devices = [get_device("rtx_4090"), get_device("this_cpu")]
    quants = [get_quant(q) for q in ("f16", "q4_k_m")]
    out = ch.choose(models, quants, devices, ch.Budgets(tpot_s=0.05), quality, "quality_per_joule")
    assert len(out) == 8
    ok = [c for c in out if c.meets_budgets]
    assert ok and all(c.tpot_s <= 0.05 and c.fits_memory for c in ok)
    assert all("TPOT" in c.why_not or "needs" in c.why_not for c in out if not c.meets_budgets)
    for c in out:
        assert c.quality_per_joule == pytest.approx(c.quality / c.j_per_token)
    qpj = [c.quality_per_joule for c in ok]
    assert qpj == sorted(qpj, reverse=True)
    front = ch.quality_latency_front(out)
    assert front[0].tpot_s == min(c.tpot_s for c in out if c.fits_memory)
    assert [c.quality for c in front] == sorted(c.quality for c in front)
    with pytest.raises(ServesimError, match="needs a quality file"):
        ch.choose(models, quants, devices, rank_by="quality")


def test_read_quality_errors(tmp_path) -> None:
    f = tmp_path / "q.csv"
    f.write_text("name,acc\nx,1\n")
    with pytest.raises(ServesimError, match="header"):
        ch.read_quality(f)
    f.write_text("model,score\nx,high\n")
    with pytest.raises(ServesimError, match="line 2"):
        ch.read_quality(f)


def test_read_quality_takes_a_spreadsheet_export(tmp_path) -> None:
    """A spreadsheet's CSV starts with a byte-order mark; the header is still `model,score`."""
    f = tmp_path / "q.csv"
    f.write_bytes("\ufeffmodel,score\r\nmeta-llama/Meta-Llama-3.1-8B,0.7\r\n".encode())
    assert ch.read_quality(f) == {"meta-llama/Meta-Llama-3.1-8B": 0.7}


def test_cli_split_and_choose_json(capsys) -> None:
    rc = cli.main(
        [
            "split",
            "meta-llama/Meta-Llama-3.1-8B",
            "--on",
            "jetson_orin_nano,rtx_4090",
            "--link",
            "1gbe",
            "--json",
        ]
    )
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["front"][0]["latency_s"] <= doc["front"][-1]["latency_s"]
    first = doc["front"][0]
    assert first["devices"] == ["jetson_orin_nano", "rtx_4090"]
    assert len(first["mem_gb"]) == len(first["layers"]) == 2
    rc = cli.main(
        [
            "split",
            "meta-llama/Meta-Llama-3.1-70B",
            "--on",
            "jetson_orin_nano",
            "--mode",
            "tensor",
            "--num-devices",
            "4",
            "--window",
            "4",
            "--json",
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["fits"] and doc["model_bytes"] > 4 * doc["device_mem_bytes"]
    rc = cli.main(
        [
            "split",
            "meta-llama/Meta-Llama-3.1-70B",
            "--on",
            "rtx_4090,ryzen_9_7950x",
            "--mode",
            "offload",
            "--json",
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["best"]["mode"] == "ngl" and 0 < doc["best"]["gpu_layers"] < 80
    rc = cli.main(
        [
            "choose",
            "--on",
            "rtx_4090",
            "--models",
            "meta-llama/Meta-Llama-3.1-8B",
            "--quants",
            "q4_k_m,f16",
            "--tpot-ms",
            "15",
            "--json",
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["meeting_budgets"] == 1
    assert doc["candidates"][0]["quant"] == "q4_k_m"


def test_choose_takes_a_user_config(tmp_path, capsys) -> None:
    cfg = {
        "model_type": "llama",
        "num_hidden_layers": 16,
        "hidden_size": 2048,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 8192,
        "vocab_size": 128256,
        "torch_dtype": "bfloat16",
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    rc = cli.main(
        ["choose", "--on", "phone", "--models", str(path), "--quants", "q4_k_m", "--json"]
    )
    doc = json.loads(capsys.readouterr().out)
    (c,) = doc["candidates"]
    assert rc == 0 and c["fits_memory"] and 1.0 < c["params_b"] < 1.6


@pytest.mark.parametrize(
    "argv, message",
    [
        (["split", "meta-llama/Meta-Llama-3.1-8B", "--on", "nope"], "Unknown device"),
        (["split", "meta-llama/Meta-Llama-3.1-8B", "--on", "rtx_4090", "--link", "x"], "link"),
        (["split", "meta-llama/Meta-Llama-3.1-405B", "--on", "phone"], "No split"),
        (["choose", "--on", "rtx_4090", "--quants", "q3"], "Unknown quantisation"),
        (["split", "Qwen/Qwen3-8B", "--on", "rtx_4090", "--window", "3"], "--mode tensor only"),
        (
            ["split", "Qwen/Qwen3-8B", "--on", "rtx_4090", "--mode", "tensor", "--any-order"],
            "pipeline only",
        ),
        (["split", "Qwen/Qwen3-8B", "--on", "rtx_4090,phone", "--mode", "offload"], "GPU,CPU"),
        (["choose", "--on", "rtx_4090", "--tpot-ms", "-1"], "greater than 0"),
        (["choose", "--on", "rtx_4090", "--rank-by", "quality"], "quality file"),
    ],
)
def test_cli_errors_are_one_sentence(capsys, argv, message) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("cmd", ["split", "choose"])
def test_cli_help(capsys, cmd) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, "--help"])
    assert e.value.code == 0 and "--json" in capsys.readouterr().out


def test_split_json_keeps_each_of_two_devices_of_a_kind(capsys) -> None:
    """Two RTX 4090s in one pipeline: the JSON keyed memory by device name, so one of the two
    stages' figures vanished; it now lists them in pipeline order, as the table shows."""
    args = ["split", "meta-llama/Llama-3.1-8B", "--on", "rtx_4090,rtx_4090", "--quant", "f16"]
    rc = cli.main([*args, "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    for s in doc["front"]:
        assert s["devices"] == ["rtx_4090", "rtx_4090"]
        assert len(s["mem_gb"]) == 2
        assert all((m > 0) == (n > 0) for m, n in zip(s["mem_gb"], s["layers"], strict=True))
        if s["layers"][0] != s["layers"][1]:  # an uneven split holds unequal memory
            assert s["mem_gb"][0] != s["mem_gb"][1]


def test_cli_offload_refuses_a_prompt_the_latency_target_ignores(capsys) -> None:
    """`split --mode offload --prompt N` without `--target throughput` priced batch-1 decode
    at --context and dropped the prompt without a word; it is one sentence and exit 2."""
    args = ["split", "meta-llama/Meta-Llama-3.1-8B", "--on", "rtx_4090,this_cpu"]
    rc = cli.main([*args, "--mode", "offload", "--prompt", "4096"])
    assert rc == 2
    assert "--prompt sizes the prefill of --target throughput" in capsys.readouterr().err
    assert cli.main([*args, "--mode", "offload", "--target", "throughput", "--prompt", "64"]) == 0

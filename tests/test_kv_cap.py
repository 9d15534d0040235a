"""A cap on the KV-cache tokens each attention-DP rank holds (SGLang `--max-total-tokens`,
TensorRT-LLM `kv_cache_config.max_tokens`), read from srt-slurm recipes (issue 12)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from servesim.errors import ServesimError
from servesim.sim.deployment import Deployment
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

REPO = Path(__file__).resolve().parents[1]


def test_a_kv_pool_cap_bounds_each_dp_rank_and_comes_from_recipes() -> None:
    """SGLang's `--max-total-tokens` (and TensorRT-LLM's `kv_cache_config.max_tokens`) cap the
    KV pool each scheduler (attention-DP rank) holds below what memory allows; a cap above it
    changes nothing. srt-slurm's GB200 SGLang low-latency prefill servers set 8,192."""
    sys.path.insert(0, str(REPO / "scripts"))
    import inferencex_layouts as lay

    m = load_model("deepseek-ai/DeepSeek-R1")
    m = replace(m, weight_dtype="fp4", expert_dtype="fp4")
    par = Parallel(tp=1, dp=4, ep=4)
    free = Deployment(
        model=m, device=get_device("gb200"), parallel=par, engine=get_engine("sglang")
    )
    whole = free.memory().kv_tokens
    capped = replace(free, engine=replace(get_engine("sglang"), max_kv_tokens=8192))
    assert capped.memory().kv_tokens == 4 * 8192 < whole
    wide = replace(free, engine=replace(get_engine("sglang"), max_kv_tokens=10**9))
    assert wide.memory().kv_tokens == whole
    with pytest.raises(ServesimError, match="max_kv_tokens"):
        replace(get_engine("sglang"), max_kv_tokens=-1)
    sgl = (
        "backend:\n  sglang_config:\n    prefill:\n      max-total-tokens: 8192\n"
        "      chunked-prefill-size: 8192\n    decode:\n      cuda-graph-max-bs: 64\n"
    )
    assert lay.recipe_settings(sgl) == ("kv_tokens=8192 token_budget=8192", "graph_max_bs=64")
    trt = (
        "backend:\n  trtllm_config:\n    prefill:\n      kv_cache_config:\n"
        "        max_tokens: 16384\n    decode:\n      max_num_tokens: 64\n"
    )
    assert lay.recipe_settings(trt) == ("kv_tokens=16384", "token_budget=64")


def test_the_cli_caps_the_kv_pool(capsys) -> None:
    """`--max-kv-tokens 8192` on DEP4: 4 x 8,192 tokens, and only their bytes allocated
    (575.7 MB a device)."""
    import json

    from servesim.cli.main import main

    args = "predict --model deepseek-ai/DeepSeek-R1 --device gb200 --tp 1 --dp 4 --ep 4"
    args += " --engine sglang --decode-seqs 16 --weight-dtype fp4 --max-kv-tokens 8192 --json"
    assert main(args.split()) in (0, None)
    mem = json.loads(capsys.readouterr().out)["memory"]
    assert mem["kv_tokens"] == 4 * 8192
    # bf16 MLA latents (512 + 64 values) of 61 layers on every device: 70,272 bytes a token
    per_token = 61 * (512 + 64) * 2
    assert mem["kv_gb"] == pytest.approx(8192 * per_token / 1e9, rel=1e-6)


def test_a_cap_too_small_for_a_request_names_the_flag(capsys) -> None:
    """A cap below one request's length is refused in one sentence that names the fix."""
    from servesim.cli.main import main

    args = "simulate --model meta-llama/Llama-3.1-8B --device h100_sxm --max-kv-tokens 16"
    code = main([*args.split(), "--num-requests", "5"])
    err = capsys.readouterr().err
    assert code == 2
    assert "raise --max-kv-tokens" in err and "Traceback" not in err

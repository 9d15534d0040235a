"""A step with more tokens than the whole tables hold is priced from a block around it, with the
figures the whole tables would give: one huge prefill batch must not tabulate every count."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.predictor.iteration import FAR_BLOCK, FAR_TOKENS, Predictor
from servesim.spec.devices import get_device
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model
from servesim.spec.parallel import Parallel

CASES = [
    ("deepseek-ai/DeepSeek-R1", "b200_sxm", Parallel(tp=8, ep=8)),
    ("meta-llama/Llama-3.1-70B", "h100_sxm", Parallel(tp=4)),
    ("deepseek-ai/DeepSeek-R1", "gb200", Parallel(tp=1, ep=8, dp=8)),
    # two nodes: the attention-DP gather and scatter are multi-node collectives
    ("deepseek-ai/DeepSeek-R1", "h100_sxm", Parallel(tp=1, ep=16, dp=16)),
]


@pytest.mark.parametrize(("name", "device", "par"), CASES)
def test_far_counts_price_as_the_whole_tables_do(name: str, device: str, par: Parallel) -> None:
    model = load_model(name)
    far = Predictor(model, get_device(device), par, get_engine("sglang"))
    whole = Predictor(model, get_device(device), par, get_engine("sglang"))
    counts = [FAR_TOKENS + 7, 70_000, 131_072]
    seconds = [far.dense_s(t, 10) for t in counts]
    work = [far.step_work_s(0, 0, [(t, 0)]) for t in counts]
    whole._grow_tables(max(counts))  # the old way: every count up to 262,144 ...
    t = np.arange(1 << 18, dtype=np.float64)
    t[0] = 1.0
    group = sum((term.seconds for term in whole._group_terms(t)), np.zeros(len(t)))
    whole._group_tab[False] = group.tolist()  # ... for the expert layers too
    assert seconds == [whole.dense_s(t, 10) for t in counts]
    assert work == [whole.step_work_s(0, 0, [(t, 0)]) for t in counts]
    # ... and only the blocks holding them were priced, not the counts in between
    assert len(far._dense_tab) <= FAR_TOKENS
    rank = [-(-t // par.dp) for t in counts]
    assert sorted(far._far) == sorted({t // FAR_BLOCK for t in rank if t >= FAR_TOKENS})
    if par.dp > 1:  # the expert layers see every rank's tokens
        assert len(far._group_tab[False]) <= FAR_TOKENS
        assert sorted(far._far_group[False]) == sorted({t // FAR_BLOCK for t in counts})


def test_a_wide_ep_prefill_twin_keeps_its_own_far_blocks() -> None:
    """SGLang's DeepEP prefill (normal mode) prices its expert layers from other tables than
    the decode (low-latency mode): the twin must not read the decode's far blocks."""
    model = load_model("deepseek-ai/DeepSeek-R1")
    engine = get_engine("sglang").with_overrides(moe_a2a="deepep")
    dev, par = get_device("gb200"), Parallel(tp=1, ep=8, dp=8)
    pred = Predictor(model, dev, par, engine)
    big = 8 * 40_000
    pred._group_s(big)  # the decode tables' far block
    twin = pred._prefill_twin()
    fresh = Predictor(model, dev, par, engine)._prefill_twin()
    assert twin._group_s(big) == fresh._group_s(big)
    assert twin._far_group[False] is not pred._far_group[False]


def test_variants_that_read_the_whole_tables_still_grow_them() -> None:
    """Co-served fine-tuning reads the dense table at its own counts; a 40,000-token training
    budget must not find the table cut short by the far blocks."""
    from servesim.predictor.coserving import CoServingPredictor
    from servesim.spec.finetune import FineTuneJob

    model, dev = load_model("meta-llama/Llama-3.1-8B"), get_device("h100_sxm")
    co = CoServingPredictor(model, dev, job=FineTuneJob(40_000))
    base = Predictor(model, dev)
    base.cover(40_008, 1)
    # PEFT: 2 x (dense work of 40,008 tokens - of 8, plus 39 causal 1,024-token sequences
    # and one of 64: the job's seq_len 1,024)
    extra = base._dense_tab[40_008] - base._dense_tab[8]
    extra += 39 * base.prefill_attn_s(1024, 0) + base.prefill_attn_s(64, 0)
    step = base.step_s(8, 8 * 1024, ())
    assert co.step_s(8, 8 * 1024, ()) == pytest.approx(step + 2 * extra)


def test_a_far_block_counts_its_operator_shapes_once() -> None:
    """The run summary counts priced operator shapes by provenance: a far block adds its
    FAR_BLOCK counts of every non-attention operator, once however often it is read, and
    growing the whole tables later neither drops nor repeats them."""
    model = load_model("meta-llama/Llama-3.1-70B")
    pred = Predictor(model, get_device("h100_sxm"), Parallel(tp=4), get_engine("vllm"))
    pred.dense_s(10, 1)
    before = sum(pred.provenance_counts().values())
    ops = len(pred._dense_arrays(np.ones(1))[2])
    pred.dense_s(FAR_TOKENS + 5, 1)
    pred.dense_s(FAR_TOKENS + 9, 1)  # the same block
    after = sum(pred.provenance_counts().values())
    assert after - before == ops * FAR_BLOCK
    pred._grow_tables(2048)  # the whole tables grow: the block's shapes stay counted once
    whole = sum(pred._dense_prov.values())
    assert sum(pred.provenance_counts().values()) == whole + ops * FAR_BLOCK

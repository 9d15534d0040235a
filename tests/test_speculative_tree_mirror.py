"""Draft trees (EAGLE-2/Medusa widths per depth) and Mirror-SD (the drafter on its own devices,
in parallel with verify): the accepted length, the verify and draft price, the KV reserved, the
planner's search and cost, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.cli.main import main
from servesim.errors import ServesimError
from servesim.planner.candidates import (
    Candidate,
    PlanSpec,
    SearchSpace,
    deployment_for,
    enumerate_candidates,
)
from servesim.predictor.iteration import BatchShape
from servesim.sim.deployment import Deployment
from servesim.sim.simulate import simulate
from servesim.sim.synthetic import ClosedLoop, Fixed
from servesim.spec.devices import get_device
from servesim.spec.speculative import SpeculativeDecoding

LLAMA8 = "meta-llama/Llama-3.1-8B"


def _tpot(dep: Deployment, clients: int, output: int = 256) -> float:
    loop = ClosedLoop(clients, 2 * clients, Fixed(512), Fixed(output))
    return simulate(dep, closed_loop=loop).summary()["tpot_s"]["p50"]


# ---- draft trees --------------------------------------------------------------------------------
def test_tree_acceptance_hand_computed() -> None:
    # Depth 1: 3 candidates at 0.6 → 1 − 0.4³ = 0.936; depth 2: 2 at 0.5 → 1 − 0.5² = 0.75.
    sd = SpeculativeDecoding("eagle", 2, (0.6, 0.5), tree_widths=(3, 2))
    assert sd.depth_acceptance == pytest.approx((0.936, 0.75))
    assert sd.expected_tokens_per_step == pytest.approx(1 + 0.936 + 0.936 * 0.75)
    assert sd.verify_tokens == 6  # the root and 3 + 2 nodes
    # pass 1 runs the kept positions, padded to depth + 1; pass 2 expands depth 1's candidates
    assert sd.draft_rows == (3, 3)
    assert sd.label() == "eagle2w3-2"
    chain = SpeculativeDecoding("eagle", 2, (0.6, 0.5))
    assert chain.tree_widths == (1, 1) and chain.verify_tokens == 3 and not chain.is_tree
    assert SpeculativeDecoding("eagle", 3, tree_widths=(4,)).tree_widths == (4, 4, 4)


def test_tree_accepts_more_costs_more_verify_pays_off_only_at_small_batch(llama8, h100) -> None:
    """At equal depth a width-4 tree accepts more per step than the chain, verifies 13 tokens
    per sequence instead of 4 and drafts 4 nodes a pass: nearly free at batch 1 (reading the
    weights dominates), so its time per token is lower; compute-bound at batch 256, where the
    chain wins."""
    chain = SpeculativeDecoding("eagle", 3)
    tree = SpeculativeDecoding("eagle", 3, tree_widths=(4,))
    assert tree.expected_tokens_per_step > chain.expected_tokens_per_step + 0.9
    pc = Deployment(llama8, h100, speculative=chain, latency_model="roofline").predictor()
    pt = Deployment(llama8, h100, speculative=tree, latency_model="roofline").predictor()

    def per_token(pred, sd, b: int) -> float:
        return pred.step_s(b, b * 1024, ()) / sd.expected_tokens_per_step

    for b in (1, 256):
        vc = pc.breakdown_s(BatchShape(b, b * 1024))[1]
        vt = pt.breakdown_s(BatchShape(b, b * 1024))[1]
        assert vt > vc  # more verify compute at any batch
        assert pt.draft_s(b, b * 1024) > pc.draft_s(b, b * 1024)
    assert per_token(pt, tree, 1) < 0.8 * per_token(pc, chain, 1)
    assert per_token(pt, tree, 256) > 1.3 * per_token(pc, chain, 256)
    # The simulator agrees at one client.
    roof = "roofline"
    assert _tpot(Deployment(llama8, h100, speculative=tree, latency_model=roof), 1) < 0.85 * _tpot(
        Deployment(llama8, h100, speculative=chain, latency_model=roof), 1
    )


def test_tree_reserves_kv_for_every_node_and_conserves_tokens(llama8) -> None:
    """A cache too small for the batch: each step reserves the KV of all 1 + 3·3 tree nodes per
    sequence, so sequences are preempted sooner than with a chain, and every request still
    gets exactly its tokens."""
    l4 = get_device("l4")
    res = {}
    for widths in ((1,), (3,)):
        sd = SpeculativeDecoding("eagle", 3, tree_widths=widths)
        dep = Deployment(llama8, l4, max_num_seqs=256, speculative=sd)
        loop = ClosedLoop(200, 400, Fixed(2000), Fixed(600))
        r = simulate(dep, closed_loop=loop)  # raises ConservationError on a lost token
        assert int(r.columns()["generated_tokens"].sum()) == 400 * 600
        res[widths] = r.summary()
    assert res[(3,)]["preemptions"] > 0
    assert res[(3,)]["iterations"] < res[(1,)]["iterations"]  # more tokens per step


# ---- Mirror-SD ----------------------------------------------------------------------------------
def test_mirror_step_is_the_longer_side_plus_the_exchange(llama8, h100) -> None:
    sd = SpeculativeDecoding("eagle", 3, mirror_device=h100)
    pred = Deployment(llama8, h100, speculative=sd).predictor()
    n, ctx = 8, 8 * 1024
    draft, verify = pred.breakdown_s(BatchShape(n, ctx))
    # Two messages; 4 verify tokens per sequence: int32 ids and the target's bf16 hidden
    # states (4096 wide) for the EAGLE head, over NVLink at 80 % of 450 GB/s, 2 µs a message.
    nbytes = n * 4 * 4 + n * 4 * 4096 * 2
    exchange = 2 * 2e-6 + nbytes / (0.8 * 450e9)
    assert pred.exchange_s(n) == pytest.approx(exchange)
    assert pred.step_s(n, ctx, ()) == pytest.approx(max(draft, verify) + exchange)
    serial = Deployment(llama8, h100, speculative=SpeculativeDecoding("eagle", 3)).predictor()
    assert serial.step_s(n, ctx, ()) == pytest.approx(draft + verify)


def test_mirror_devices_priced_and_counted(llama8, h100) -> None:
    sd = SpeculativeDecoding("eagle", 3, mirror_device=get_device("l4"), mirror_devices=2)
    dep = Deployment(llama8, h100, replicas=3, speculative=sd)
    assert dep.num_devices == 3 * (1 + 2)
    l4 = get_device("l4").price_per_hour
    assert dep.price_per_hour == pytest.approx(3 * h100.price_per_hour + 6 * l4)


def test_mirror_beats_serial_drafting_where_the_draft_is_a_large_share(llama8, h100) -> None:
    """Mirror-SD's claim: hiding the draft behind verify saves about the draft's share of the
    step. At one client the EAGLE drafts are ~19 % of a step and TPOT falls by about that; at
    256 clients the verify pass grows far more than the drafts and the gain shrinks."""
    serial = Deployment(llama8, h100, speculative=SpeculativeDecoding("eagle", 3))
    mirror = Deployment(
        llama8, h100, speculative=SpeculativeDecoding("eagle", 3, mirror_device=h100)
    )
    pred = serial.predictor()
    share = pred.draft_s(1, 600) / pred.step_s(1, 600, ())
    assert 0.1 < share < 0.4
    gain_1 = 1 - _tpot(mirror, 1) / _tpot(serial, 1)
    assert gain_1 == pytest.approx(share, abs=0.05)
    p256 = mirror.predictor()
    big = 1 - p256.step_s(256, 256 * 600, ()) / pred.step_s(256, 256 * 600, ())
    assert big < gain_1


# ---- planner and CLI ----------------------------------------------------------------------------
def test_planner_searches_tree_widths_and_prices_mirror_devices(llama8) -> None:
    space = SearchSpace(
        devices=("h100_sxm",), tp=(1,), batching=((256, 8192),), speculative_k=(0, 2),
        speculative_tree_width=(1, 4),
    )  # fmt: skip
    assert space.speculation_axes() == ((0, 1), (2, 1), (2, 4))
    cands = enumerate_candidates(space, llama8)
    pairs = [(c.num_draft_tokens, c.spec_tree_width) for c in cands]
    assert set(pairs) == {(0, 1), (2, 1), (2, 4)}
    assert pairs.count((0, 1)) == pairs.count((2, 4)) == len(pairs) // 3  # each on every axis
    spec = PlanSpec(LLAMA8, speculative="eagle", mirror_device="l4")
    dep = deployment_for(spec, Candidate("h100_sxm", 1, num_draft_tokens=2, spec_tree_width=4))
    assert dep.speculative.tree_widths == (4, 4) and dep.speculative.mirror_device.name
    assert dep.num_devices == 2
    off = deployment_for(spec, Candidate("h100_sxm", 1))
    assert off.num_devices == 1  # no speculation, no draft devices
    assert spec.key() != PlanSpec(LLAMA8, speculative="eagle").key()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--spec-tree-width", "4"], "does nothing without --speculative"),
        (["--mirror-draft-device", "h100_sxm"], "does nothing without --speculative"),
        (
            ["--speculative", "eagle", "--num-draft-tokens", "3", "--spec-tree-width", "4,4"],
            "one width or one per depth",
        ),
        (
            ["--speculative", "eagle", "--num-draft-tokens", "2", "--spec-tree-width", "0"],
            "spec-tree-width",
        ),
    ],
)
def test_cli_refusals(argv: list[str], words: str, capsys) -> None:
    code = main(["predict", "--model", LLAMA8, "--decode-seqs", "4", *argv])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err


def test_predict_cli_reports_tree_and_mirror(capsys) -> None:
    import json

    base = ["predict", "--model", LLAMA8, "--decode-seqs", "1", "--speculative", "eagle"]
    code = main([*base, "--num-draft-tokens", "3", "--spec-tree-width", "4", "--json"])
    spec = json.loads(capsys.readouterr().out)["speculative"]
    assert code == 0 and spec["verify_tokens"] == 13 and spec["label"] == "eagle3w4"
    assert spec["tokens_per_step"] == pytest.approx(1 + sum(np.cumprod([1 - 0.2**4] * 3)))
    code = main([*base, "--num-draft-tokens", "3", "--mirror-draft-device", "h100_sxm", "--json"])
    doc = json.loads(capsys.readouterr().out)
    spec = doc["speculative"]
    assert code == 0 and spec["mirror"] and spec["label"] == "eagle3+mirror"


def test_bad_tree_and_mirror_refused_in_one_sentence() -> None:
    for kwargs, words in (
        ({"tree_widths": (2, 2)}, "one width or one per depth"),
        ({"mirror_devices": 0}, "at least one draft device"),
        ({"mirror_link": "wifi"}, "Unknown Mirror-SD link"),
    ):
        with pytest.raises(ServesimError, match=words) as err:
            SpeculativeDecoding("eagle", 3, **kwargs)
        assert str(err.value).count(". ") == 0

"""Layer skipping (FiRST) and sub-models (AmoebaLLM): a batch pays for every layer any of its
sequences runs, so skipping pays for a lone request and for correlated skips, not for many
independent ones."""

from __future__ import annotations

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.predictor.adaptive_depth import SkippingPredictor, users_pmf
from servesim.predictor.iteration import Predictor
from servesim.spec.adaptive_depth import LayerSkipping, submodel
from servesim.spec.devices import Catalog
from servesim.spec.engine_profile import get_engine
from servesim.spec.model import load_model

LLAMA = load_model("meta-llama/Llama-3.1-8B")
H100 = Catalog().get("h100_sxm")


def predictors(skipping: LayerSkipping) -> tuple[Predictor, SkippingPredictor]:
    engine = get_engine("vllm")
    return Predictor(LLAMA, H100, engine=engine), SkippingPredictor(
        LLAMA, H100, engine=engine, skipping=skipping
    )


def test_users_distribution_hand_computed() -> None:
    """4 sequences, each skipping with p = 0.5: independent → Binomial(4, 0.5); all following
    one decision → none or all of them, half the time each."""
    assert np.allclose(users_pmf(4, 0.5, 0.0), [1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16])
    assert np.allclose(users_pmf(4, 0.5, 1.0), [0.5, 0, 0, 0, 0.5])
    # Half follow (k ~ Bin(4, ½) of them): nobody runs the layer if the k followers skip
    # (½, when k ≥ 1) and the 4 − k others do: Σ_k C(4,k)/16 · ½^(4−k) = (3/4)^4, of which the
    # k = 0 term 1/256 needs no shared skip.
    assert users_pmf(4, 0.5, 0.5)[0] == pytest.approx(0.5 * (0.75**4 - 1 / 256) + 1 / 256)
    assert users_pmf(0, 0.3, 0.2).tolist() == [1.0]


def test_users_distribution_matches_drawn_masks() -> None:
    """The priced distribution is the one per-request masks follow: batches of 4 requests
    (each batch draws who follows the shared pattern), 8 layers each skipped with p = 0.3,
    half the requests following on average; 3,000 batches."""
    skip = LayerSkipping(0.3, correlation=0.5)
    users = np.concatenate([skip.masks(4, 8, seed=i).sum(axis=0) for i in range(3000)])
    drawn = np.bincount(users, minlength=5) / len(users)
    assert drawn == pytest.approx(users_pmf(4, 0.3, 0.5), abs=0.015)


def test_a_lone_request_skipping_half_the_layers_decodes_in_about_half_the_time() -> None:
    """Every per-layer cost halves; the LM head and the engine's step overhead do not."""
    base, skip = predictors(LayerSkipping(0.5))
    full, half = base.step_s(1, 512, ()), skip.step_s(1, 512, ())
    fixed = base._lm_tab[1] + base.overhead_s(1, 0)
    assert half == pytest.approx(fixed + 0.5 * (full - fixed), rel=1e-9)
    assert 0.5 < half / full < 0.65, (full, half)


def test_at_batch_64_independent_skips_save_almost_nothing_correlated_ones_the_share() -> None:
    """Short contexts, so the weight read dominates: with 64 independent requests every layer
    is still run by someone (P(none) = 2^-64); with one shared pattern half the layers run."""
    ctx = 64 * 64
    base, indep = predictors(LayerSkipping(0.5, correlation=0.0))
    _, shared = predictors(LayerSkipping(0.5, correlation=1.0))
    full, i, s = base.step_s(64, ctx, ()), indep.step_s(64, ctx, ()), shared.step_s(64, ctx, ())
    fixed = base._lm_tab[64] + base.overhead_s(64, 0)
    saved_indep = 1 - (i - fixed) / (full - fixed)
    saved_shared = 1 - (s - fixed) / (full - fixed)
    assert saved_indep < 0.10, (full, i)  # only the sequences' own KV reads shrink
    assert saved_shared == pytest.approx(0.5, abs=1e-6), (full, s)


def test_prefill_savings_scale_with_the_tokens_that_skip() -> None:
    """FiRST decides in prefill and runs every layer there (no saving); with prompt tokens
    skipping too, a 4,096-token prefill runs half its layer work."""
    base, first = predictors(LayerSkipping(0.5))
    _, both = predictors(LayerSkipping(0.5, phase="both"))
    shape = ((4096, 0),)
    full = base.step_s(0, 0, shape)
    assert first.step_s(0, 0, shape) == pytest.approx(full, rel=1e-9)
    fixed = base._lm_tab[1] + base.overhead_s(0, 1)
    assert both.step_s(0, 0, shape) - fixed == pytest.approx(0.5 * (full - fixed), rel=0.02)


def test_protected_layers_and_masks() -> None:
    s = LayerSkipping(0.5, protected_first=2, protected_last=2)
    p = s.layer_probs(8)
    assert p.tolist() == [0, 0, 0.5, 0.5, 0.5, 0.5, 0, 0]
    assert s.used_share(8) == pytest.approx(0.75)
    masks = LayerSkipping(0.5, correlation=1.0).masks(100, 16, seed=3)
    assert (masks == masks[0]).all()  # everyone follows the one pattern
    free = LayerSkipping(0.5).masks(4000, 16, seed=3)
    assert free.mean() == pytest.approx(0.5, abs=0.02)
    assert (LayerSkipping(0.5).masks(10, 16, seed=1) == LayerSkipping(0.5).masks(10, 16, 1)).all()


def test_bad_skipping_and_submodels_are_refused_with_a_sentence() -> None:
    for bad in (
        dict(skip_prob=1.0),
        dict(skip_prob=0.2, correlation=1.5),
        dict(skip_prob=0.2, phase="prefill"),
    ):
        with pytest.raises(ServesimError):
            LayerSkipping(**bad)
    with pytest.raises(ServesimError, match="leaves none"):
        LayerSkipping(0.3, protected_first=16, protected_last=16).layer_probs(32)
    with pytest.raises(ServesimError, match="dense"):
        submodel(load_model("deepseek-ai/DeepSeek-V3"), depth=10)
    with pytest.raises(ServesimError, match="depth"):
        submodel(LLAMA, depth=33)
    with pytest.raises(ServesimError, match="layers are all alike"):
        SkippingPredictor(load_model("deepseek-ai/DeepSeek-V3"), H100, skipping=LayerSkipping(0.3))


def test_a_submodel_of_half_depth_and_width_is_priced_as_a_model_of_its_own() -> None:
    """Llama-3.1-8B at 16 layers and half width: 16 × (attention 4096·(2048+2·512)+2048·4096
    ... ) — the parameter count follows the shapes, and decode at batch 1 (weight-bound) takes
    about the share of the weights it keeps."""
    small = submodel(LLAMA, depth=16, width=0.5)
    assert (small.num_layers, small.num_heads, small.num_kv_heads) == (16, 16, 4)
    assert small.intermediate_size == 7168 and small.head_dim == LLAMA.head_dim
    per_layer = 4096 * 16 * 128 * 2 + 4096 * 4 * 128 * 2 + 3 * 4096 * 7168 + 2 * 4096
    emb = LLAMA.vocab_size * LLAMA.hidden_size * (1 if LLAMA.tie_embeddings else 2)
    assert small.num_params() == pytest.approx(16 * per_layer + emb + 4096, rel=1e-6)
    big_p, small_p = Predictor(LLAMA, H100), Predictor(small, H100)
    full = big_p.step_s(1, 256, ()) - big_p.overhead_s(1, 0)
    part = small_p.step_s(1, 256, ()) - small_p.overhead_s(1, 0)
    share = small.param_bytes() / LLAMA.param_bytes()  # 0.35
    assert part / full == pytest.approx(share, rel=0.1), (full, part, share)


def test_cli_predict_shows_both_iterations_and_simulate_runs_with_skipping(
    tmp_path, capsys
) -> None:
    import json

    from servesim.cli.main import main

    args = ["predict", "--decode-seqs", "1", "--context", "512", "--skip-prob", "0.5", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    skip = out["layer_skipping"]
    assert skip["full_depth_seconds"] == pytest.approx(out["totals"]["seconds"])
    assert 0.35 < skip["saving"] < 0.5 and skip["used_layer_share"] == 0.5
    run = ["simulate", "--rate", "5", "--num-requests", "60", "--out", str(tmp_path / "r")]
    assert main([*run, "--skip-prob", "0.5", "--skip-correlation", "1"]) == 0
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert "skip0.5" in summary["deployment"]
    assert main(["predict", "--decode-seqs", "2", "--skip-phase", "both"]) == 2
    assert "--skip-prob" in capsys.readouterr().err


def test_plan_prices_candidates_with_layer_skipping() -> None:
    """A plan with --skip-prob builds every candidate with that skipping and keys its results
    apart from the plan without."""
    from servesim.planner.candidates import Candidate, PlanSpec, deployment_for

    plain = PlanSpec(model="meta-llama/Llama-3.1-8B")
    skip = PlanSpec(model="meta-llama/Llama-3.1-8B", skip_prob=0.4, skip_correlation=1.0)
    c = Candidate(device="h100_sxm", tp=1, engine="vllm")
    dep = deployment_for(skip, c)
    assert dep.layer_skipping == LayerSkipping(0.4, 1.0)
    assert deployment_for(plain, c).layer_skipping is None and skip.key() != plain.key()
    assert dep.predictor().step_s(8, 8192, ()) < deployment_for(plain, c).predictor().step_s(
        8, 8192, ()
    )

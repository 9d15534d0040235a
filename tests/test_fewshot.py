"""Few-shot calibration: an unseen device with known efficiencies is recovered from ten shots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.predictor import calibrate, fewshot
from servesim.predictor.roofline import default_fit
from servesim.spec.devices import get_device

AIC = Path(__file__).resolve().parents[1] / "data" / "aic" / "h100_sxm"


@pytest.fixture(scope="module")
def pool():
    full = fewshot.measurements(AIC)
    # Every 8th row keeps the test fast and still spans all shapes.
    return fewshot.Shots(
        {
            f: calibrate.subset(s, np.arange(len(s["latency_s"])) % 8 == 0)
            for f, s in full.samples.items()
        }
    )


def _unseen(pool, z_true):
    """The same shapes measured on a device whose efficiencies differ by known factors."""
    dev = get_device("h100_sxm")
    truth = fewshot.apply(default_fit(), z_true)
    pred = fewshot.predict(pool, dev, truth)
    return fewshot.Shots({f: {**s, "latency_s": pred[f]} for f, s in pool.samples.items()})


def test_zero_factors_return_the_prior():
    prior = default_fit()
    same = fewshot.apply(prior, np.zeros(12))
    assert same.params == prior.params


def test_draw_splits_measurements_without_overlap(pool):
    shots, rest = fewshot.draw(pool, 10, seed=3)
    assert len(shots) == 10 and len(shots) + len(rest) == len(pool)
    again, _ = fewshot.draw(pool, 10, seed=3)
    for f in shots.samples:
        assert np.array_equal(shots.samples[f]["latency_s"], again.samples[f]["latency_s"])
    with pytest.raises(ServesimError, match="Asked for"):
        fewshot.draw(pool, len(pool) + 1)


def test_ten_shots_recover_an_unseen_device(pool):
    dev = get_device("h100_sxm")
    # Compute at 0.6x, bandwidth at 0.7x, fixed latencies 1.5x longer; GEMMs a bit slower still.
    z = np.zeros(12)
    z[:3] = np.log([0.6, 0.7, 1 / 1.5])
    z[3] = np.log(0.9)
    unseen = _unseen(pool, z)
    errs = {}
    for k in (0, 10):
        med = []
        for seed in range(3):
            shots, rest = fewshot.draw(unseen, k, seed)
            fit = fewshot.fit_device(shots, dev)
            med.append(fewshot.median_ape(rest, dev, fit))
        errs[k] = float(np.median(med))
    assert errs[0] > 20.0  # the spec sheet with H100 efficiencies is far off
    assert errs[10] < 5.0  # ten measurements pin the device's factors


def test_a_few_shots_do_not_move_what_they_cannot_inform(pool):
    dev = get_device("h100_sxm")
    gemm_only = fewshot.Shots(
        {
            "gemm": calibrate.subset(
                pool.samples["gemm"], np.arange(len(pool.samples["gemm"]["latency_s"])) < 5
            )
        }
    )
    slow = fewshot.Shots(
        {
            "gemm": {
                **gemm_only.samples["gemm"],
                "latency_s": gemm_only.samples["gemm"]["latency_s"] * 2.0,
            }
        }
    )
    fit = fewshot.fit_device(slow, dev)
    # GEMMs got slower; decode attention, which no shot measured, moved much less.
    g_ratio = np.median(
        fewshot.predict(gemm_only, dev, fit)["gemm"]
        / fewshot.predict(gemm_only, dev, default_fit())["gemm"]
    )
    dec = fewshot.Shots({"attention_decode": pool.samples["attention_decode"]})
    d_ratio = np.median(
        fewshot.predict(dec, dev, fit)["attention_decode"]
        / fewshot.predict(dec, dev, default_fit())["attention_decode"]
    )
    assert g_ratio > 1.5
    assert abs(np.log(d_ratio)) < abs(np.log(g_ratio)) / 2

"""EPD disaggregation: an encode pool in front of the language model's serving.

The claim tested (Singh et al., "Efficiently Serving Large Multimodal Models Using EPD
Disaggregation", 2024): at an equal number of GPUs, giving some of them to a separate encode
pool (with a request's images spread over the encode workers) lowers TTFT under image-heavy
load, and does not under text-only load (the encode workers then idle)."""

import numpy as np
import pytest

from servesim.errors import ServesimError
from servesim.planner.epd import best_of, search_encode_split
from servesim.sim.deployment import Deployment
from servesim.sim.disagg import DisaggDeployment
from servesim.sim.encode import EncodePool, EpdDeployment, encode_stage
from servesim.sim.multimodal import synthetic_images
from servesim.sim.simulate import simulate
from servesim.sim.workload import Workload, poisson_arrivals
from servesim.spec.devices import get_device
from servesim.spec.model import load_model
from servesim.spec.vision import load_vision

NAME = "Qwen/Qwen3-VL-8B-Instruct"
GPUS = 8
WITHOUT = ("colocated", "pd")
WITH = ("e+pd", "epd")


def _setup():
    return load_model(NAME), load_vision(NAME), get_device("h100_sxm")


def _figures(rows):
    return "\n".join(
        f"  {r.kind:9s} ttft mean {r.ttft_mean_s:.3f}s p90 {r.ttft_p90_s:.3f}s {r.label}"
        for r in rows
    )


def test_epd_lowers_ttft_under_image_heavy_load_not_text_only():
    m, enc, dev = _setup()
    base = Deployment(m, dev, vision=enc)
    n = 300
    # Image-heavy: 8 images of 2048x2048 (4,096 tokens each) and 200 text tokens per request.
    text = Workload(poisson_arrivals(n, 2.0, 0), np.full(n, 200), np.full(n, 200))
    heavy = synthetic_images(text, enc, 8, 2048, 2048)
    rows = search_encode_split(base, heavy, GPUS)
    no_pool, pool = best_of(rows, WITHOUT), best_of(rows, WITH)
    gain = 1 - pool.ttft_mean_s / no_pool.ttft_mean_s
    msg = f"image-heavy, {GPUS} GPUs, gain {gain:.1%}:\n{_figures(rows)}"
    assert gain > 0.10, msg
    # The paper's headline comparison: the three-pool EPD against DistServe's two pools (the
    # encoder inside the prefill workers), each at its best split.
    assert best_of(rows, ("epd",)).ttft_mean_s < best_of(rows, ("pd",)).ttft_mean_s, msg
    # Text-only at a load where every GPU counts: 2,000-token prompts at 150 requests/s.
    plain = Workload(poisson_arrivals(n, 150.0, 1), np.full(n, 2000), np.full(n, 200))
    rows_t = search_encode_split(base, plain, GPUS)
    no_pool_t, pool_t = best_of(rows_t, WITHOUT), best_of(rows_t, WITH)
    msg_t = f"text-only, {GPUS} GPUs:\n{_figures(rows_t)}"
    assert pool_t.ttft_mean_s >= no_pool_t.ttft_mean_s, msg_t
    print(msg, msg_t, sep="\n")


def test_encode_stage_splits_a_requests_images_over_the_workers():
    m, enc, dev = _setup()
    wl = synthetic_images(
        Workload(np.array([0.0]), np.array([50]), np.array([5])), enc, 4, 1024, 1024
    )
    serve = Deployment(m, dev)
    one = EncodePool(enc, dev, 1)
    t_img = one.timing().image_s(1024, 1024)
    e = serve.engine
    fixed = e.frontend_s(int(wl.prompt_tokens[0])) + e.handoff_s(int(wl.prompt_tokens[0]))
    link = EpdDeployment(one, serve).embed_link()
    send = enc.embedding_bytes(1024, 1024) / link.bw_bytes_per_s + link.latency_s
    # One worker: 4 encodes back to back, the last image's embeddings sent after them.
    ready1 = encode_stage(EpdDeployment(one, serve), wl).ready_s[0]
    assert ready1 == pytest.approx(fixed + 4 * t_img + send, rel=1e-9)
    # Four workers: one image each, in parallel.
    ready4 = encode_stage(EpdDeployment(EncodePool(enc, dev, 4), serve), wl).ready_s[0]
    assert ready4 == pytest.approx(fixed + t_img + send, rel=1e-9)
    # Without intra-request parallelism all four go to one worker even with four.
    no_split = EpdDeployment(EncodePool(enc, dev, 4), serve, split_images=False)
    assert encode_stage(no_split, wl).ready_s[0] == pytest.approx(ready1, rel=1e-9)


def test_epd_run_conserves_requests_and_counts_devices():
    m, enc, dev = _setup()
    n = 40
    wl = synthetic_images(
        Workload(poisson_arrivals(n, 4.0, 0), np.full(n, 100), np.full(n, 20)), enc, 2, 512, 512
    )
    dep = EpdDeployment(
        EncodePool(enc, dev, 2), DisaggDeployment(Deployment(m, dev), Deployment(m, dev))
    )
    s = simulate(dep, wl).summary()
    assert s["finished"] == n and s["devices"] == 4 and s["images"] == 2 * n
    assert s["price_per_hour"] == pytest.approx(4 * dev.price_per_hour)
    assert s["deployment"].startswith("E 2x h100_sxm")
    # TTFT includes the encode stage: no request's first token before its images are encoded.
    cols = simulate(dep, wl).columns()
    ready = encode_stage(dep, wl).ready_s
    assert np.all(cols["arrival_s"] + cols["ttft_s"] >= ready[cols["request_id"]] - 1e-12)


def test_epd_refuses_mismatched_encoder_and_closed_loops():
    m, enc, dev = _setup()
    other = load_vision("Qwen/Qwen3-VL-30B-A3B-Instruct")  # 2048-wide embeddings
    with pytest.raises(ServesimError, match="hidden size"):
        EpdDeployment(EncodePool(other, dev, 1), Deployment(m, dev))
    with pytest.raises(ServesimError, match="whole number"):
        EncodePool(enc, dev, 0)

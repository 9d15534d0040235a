"""Multimodal requests: images per request added to a workload (their tokens join the prompt),
and the vision encoder run inside the engine's iteration (colocated encoding).

A request's prompt is laid out images first (the Qwen-VL chat template puts the image before
the question), each image `tokens(w, h)` placeholder tokens long. Colocated, the engine encodes
an image in the iteration whose prefill chunk first reaches its placeholders, before the language
model's forward pass (vLLM V1: the scheduler schedules a request's encoder inputs with the chunk
that covers them, `_try_schedule_encoder_inputs` in `v1/core/sched/scheduler.py`, and the model
runner runs `_execute_mm_encoder` ahead of the forward; an image is encoded whole even when the
chunk covers part of it). The encoder's time adds to that iteration. A request preempted and
recomputed is encoded again (vLLM frees its encoder cache entries on preemption).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor.encoder import EncoderTiming
from servesim.sim.workload import Seed, Workload, _rng
from servesim.spec.vision import Images, VisionEncoder


def with_images(workload: Workload, enc: VisionEncoder, images: Images) -> Workload:
    """The workload with images attached: each request's prompt grows by its image tokens."""
    if len(images) != len(workload):
        raise ServesimError(
            f"{len(images)} image counts for {len(workload)} requests; give one per request."
        )
    if workload.images is not None:
        raise ServesimError("The workload already carries images; attach them once.")
    if workload.prefix_hashes is not None:
        raise ServesimError(
            "Images on a workload with prefix hash ids are not modelled (the image tokens would "
            "shift its hashed blocks); drop the images or the hash ids."
        )
    prompts = workload.prompt_tokens + images.tokens_per_request(enc)
    return replace(workload, prompt_tokens=prompts, images=images)


def synthetic_images(
    workload: Workload,
    enc: VisionEncoder,
    per_request: float,
    width_px: int,
    height_px: int,
    frames: int = 1,
    seed: Seed = 0,
) -> Workload:
    """Attach `per_request` images of width×height to every request (a whole number), or a
    Poisson-distributed count of that mean (a fraction such as 2.5)."""
    if not (isinstance(per_request, int | float) and np.isfinite(per_request) and per_request >= 0):
        raise ServesimError(
            f"Images per request {per_request!r} must be a number ≥ 0; use e.g. 2 or 1.5."
        )
    n = len(workload)
    if float(per_request).is_integer():
        count = np.full(n, int(per_request), dtype=np.int64)
    else:
        count = _rng(seed).poisson(per_request, size=n).astype(np.int64)
    return with_images(workload, enc, Images(count, width_px, height_px, frames))


def size_images(
    workload: Workload, enc: VisionEncoder, width_px: int, height_px: int, frames: int = 1
) -> Workload:
    """Give a trace's image counts (its `images` column) a size: their tokens join the prompt."""
    if workload.images is None or workload.images.sized:
        raise ServesimError("The workload has no unsized image counts to give a size to.")
    counts = workload.images.count
    return with_images(
        replace(workload, images=None), enc, Images(counts, width_px, height_px, frames)
    )


class InEngineEncoder:
    """What a colocated replica pays to encode the images its prefill chunks reach."""

    def __init__(self, timing: EncoderTiming, images: Images, request_id: Any) -> None:
        enc = timing.enc
        self.count = images.count
        self.tokens = images.per_image(enc, enc.tokens)
        self.image_s = images.per_image(enc, timing.image_s)
        self.request_id = request_id  # request-table slot → workload index

    def chunks_s(self, chunks: list[tuple[list[int], int]]) -> float:
        """Encoder seconds of an iteration's prefill chunks ((entry, new tokens), entry[1] the
        tokens already prefilled)."""
        total = 0.0
        ids = self.request_id
        for entry, n in chunks:
            gid = ids[entry[0]]
            c = self.count[gid]
            if c:
                per = self.tokens[gid]
                done = entry[1]
                before = min(c, -(-done // per))
                after = min(c, -(-(done + n) // per))
                if after > before:
                    total += (after - before) * self.image_s[gid]
        return total

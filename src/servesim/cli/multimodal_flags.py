"""Flags for multimodal requests and EPD disaggregation (`simulate`, `plan`, `predict`): images
per request and their size, the vision encoder inside the engine or on an encode pool."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Annotated, Any

from pydantic import Field, field_validator

from servesim.cli.settings import Misuse, NonNegInt, PosInt, Settings


class ImageSizeSettings(Settings):
    """The image size asked about (`predict`)."""

    image_size: str = "1024x1024"
    video_frames: PosInt = 1

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: str) -> str:
        from servesim.spec.vision import parse_size

        parse_size(v)
        return v


class ImageSettings(ImageSizeSettings):
    """Images per request and how embeddings travel (`simulate`, `plan`)."""

    images_per_request: Annotated[float, Field(ge=0.0)] = 0.0
    encode_link: str = "nvlink"
    split_images: bool = True


class MultimodalSettings(ImageSettings):
    """`simulate`'s image and encode-pool settings (file keys as the flags, with underscores)."""

    encode_workers: NonNegInt = 0


class EpdPlanSettings(ImageSettings):
    """`plan`'s image settings and the GPU count whose splits it ranks."""

    epd_gpus: PosInt | None = None


def add_multimodal_args(p: argparse.ArgumentParser, command: str = "simulate") -> None:
    """Add the image (and, for `simulate` and `plan`, encode-pool) flags to a command."""
    g = p.add_argument_group("multimodal requests (vision-language models)")
    g.add_argument("--image-size", help="WIDTHxHEIGHT in pixels (default 1024x1024)")
    g.add_argument("--video-frames", type=int, help="frames per image: > 1 makes each a video")
    if command == "predict":
        return
    g.add_argument(
        "--images-per-request",
        type=float,
        help="images attached to every request (a fraction: Poisson count of that mean)",
    )
    if command == "plan":
        g.add_argument(
            "--epd-gpus",
            type=int,
            help="split this many GPUs over encode, prefill and decode pools and rank the splits",
        )
    else:
        g.add_argument(
            "--encode-workers",
            type=int,
            help="EPD: encode images on a separate pool of N GPUs (0: inside the engine)",
        )
    g.add_argument("--encode-link", help="link embeddings travel over (default nvlink)")
    g.add_argument(
        "--no-split-images",
        dest="split_images",
        action="store_false",
        default=None,
        help="send all of a request's images to one encode worker (EPD splits them)",
    )


def _wants_images(s: MultimodalSettings) -> bool:
    return s.images_per_request > 0 or s.encode_workers > 0


def apply_multimodal(dep: Any, work: Any, s: MultimodalSettings, model: str) -> tuple[Any, Any]:
    """The deployment and workload `simulate` runs: images attached to the requests, the
    vision encoder in the engine or, with encode workers, on an EPD encode pool."""
    from servesim.sim.deployment import Deployment
    from servesim.sim.disagg import DisaggDeployment
    from servesim.sim.encode import EncodePool, EpdDeployment
    from servesim.sim.workload import Workload
    from servesim.spec.vision import load_vision

    from_trace = isinstance(work, Workload) and work.images is not None
    if not _wants_images(s) and not from_trace:
        for key in ("image_size", "video_frames", "encode_link", "split_images"):
            if s.given(key):
                raise Misuse(f"{{{key}}} describes images; add {{images_per_request}}.")
        return dep, work
    if not isinstance(work, Workload):
        raise Misuse("{images_per_request} attaches images to an open-loop workload, not clients.")
    if not isinstance(dep, Deployment | DisaggDeployment):
        raise Misuse(
            "{images_per_request} is modelled on colocated or prefill/decode deployments only."
        )
    vision = load_vision(model)
    work = _attach(work, vision, s)
    if s.encode_workers == 0:
        if isinstance(dep, DisaggDeployment):
            return replace(dep, prefill=replace(dep.prefill, vision=vision)), work
        return replace(dep, vision=vision), work
    entry = dep.prefill if isinstance(dep, DisaggDeployment) else dep
    pool = EncodePool(vision, entry.device, s.encode_workers, engine=entry.engine, fit=entry.fit)
    return EpdDeployment(pool, dep, s.encode_link, s.split_images), work


def _attach(work: Any, vision: Any, s: ImageSettings) -> Any:
    """Images per request from the flags, or the trace's `images` column given a size."""
    from servesim.sim.multimodal import size_images, synthetic_images
    from servesim.spec.vision import parse_size

    w, h = parse_size(s.image_size)
    if work.images is not None:
        if s.given("images_per_request"):
            raise Misuse(
                "The trace gives images per request (its images column); drop "
                "{images_per_request} or the column."
            )
        return size_images(work, vision, w, h, s.video_frames)
    return synthetic_images(work, vision, s.images_per_request, w, h, s.video_frames)


def encoder_line(
    model: str, device: Any, tp: int, engine: Any, s: ImageSizeSettings, kernels: Any = None
) -> str:
    """`predict`'s line on the vision encoder: seconds per image of the size asked for (from the
    GPU's measured `kernels` where given)."""
    from servesim.predictor.encoder import EncoderTiming
    from servesim.spec.vision import load_vision, parse_size

    vision = load_vision(model)
    w, h = parse_size(s.image_size)
    f = s.video_frames
    t = EncoderTiming(vision, device, tp, engine, kernels=kernels).image_s(w, h, f)
    what = f"{w}x{h} image" if f == 1 else f"{w}x{h} video of {f} frames"
    return (
        f"vision encoder: {t * 1e3:.3f} ms per {what} on tp{tp} ({vision.patches(w, h, f):,} "
        f"patches, {vision.tokens(w, h, f):,} image tokens, {vision.flops(w, h, f) / 1e12:.2f} "
        f"TFLOP, {vision.params() / 1e6:.0f} M parameters)"
    )


# `plan` settings that choose among several replica layouts: the encode-split search runs one.
EPD_ONE_LAYOUT = ("tp", "engines", "batching")
# `plan` settings the encode-split search does not read.
EPD_UNREAD = ("pp", "weight_dtypes", "kv_dtypes", "pd_ratios", "mix", "speculative", "workflows")


def run_epd_plan(s: EpdPlanSettings, spec: Any, space: Any) -> int:
    """`plan --epd-gpus N`: every split of N GPUs over encode, prefill and decode (and without
    an encode pool) on the plan's workload with images, ranked by mean TTFT.

    The replicas are the plan's one layout: its TP degree, engine (at its stated release),
    batching limits, latency model and kernel fit; settings it would not read are refused."""
    from rich.console import Console
    from rich.table import Table

    from servesim.planner.candidates import fit_for
    from servesim.planner.epd import search_encode_split
    from servesim.sim.deployment import Deployment
    from servesim.spec.devices import get_device
    from servesim.spec.model import load_model
    from servesim.spec.parallel import Parallel
    from servesim.spec.vision import load_vision

    if s.epd_gpus is None:
        raise Misuse("{images_per_request} in a plan ranks encode splits; add {epd_gpus}.")
    for key in EPD_ONE_LAYOUT:
        if s.given(key) and len(getattr(s, key)) > 1:
            raise Misuse(
                f"{{epd_gpus}} splits the GPUs among replicas of one layout; give one {{{key}}}."
            )
    for key in EPD_UNREAD:
        if s.given(key) and getattr(s, key):
            raise Misuse(
                f"{{{key}}} does nothing with {{epd_gpus}}, which ranks the encode splits of one "
                f"replica layout; drop {{{key}}}."
            )
    work = spec.workload.build()
    if s.images_per_request <= 0 and work.images is None:
        raise Misuse(
            "{epd_gpus} splits GPUs for image encoding; add {images_per_request} (or a trace "
            "with an images column)."
        )
    device = get_device(s.gpus[0], [s.devices] if s.devices else None)
    vision = load_vision(s.model)
    if s.rate is not None:
        work = work.scaled_to_rate(s.rate)
    work = _attach(work, vision, s)
    seqs, tokens = s.batching[0] if s.given("batching") else (None, None)
    base = Deployment(
        load_model(s.model),
        device,
        parallel=Parallel(tp=space.tp[0]),
        engine=spec.engine(space.engines[0]),
        max_num_seqs=seqs,
        max_num_batched_tokens=tokens,
        fit=fit_for(spec.fit_file),
        latency_model=spec.latency_model,
        vision=vision,
    )
    rows = search_encode_split(base, work, s.epd_gpus, s.encode_link, split_images=s.split_images)
    table = Table(title=f"{s.model}: {s.epd_gpus} x {device.name}, splits by mean TTFT")
    cols = (
        "split",
        "encode",
        "prefill",
        "decode",
        "TTFT mean (s)",
        "TTFT p90 (s)",
        "TPOT p50 (ms)",
    )
    for col in cols:
        table.add_column(col)
    for r in rows[: max(s.top, 1)]:
        table.add_row(
            r.kind,
            str(r.encode),
            str(r.prefill),
            str(r.decode),
            f"{r.ttft_mean_s:.3f}",
            f"{r.ttft_p90_s:.3f}",
            f"{r.tpot_p50_s * 1e3:.1f}",
        )
    Console(emoji=False).print(table)
    return 0

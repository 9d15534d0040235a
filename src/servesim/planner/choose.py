"""Hardware-aware model choice: candidate models × quantisations × devices, priced by
`device_step`, filtered by budgets and ranked; with quality scores, accuracy per joule and the
quality-vs-latency Pareto front (HELP, MnasNet/ProxylessNAS choose architectures by measured or
predicted latency on the target device; Intelligence per Watt ranks local models by accuracy
per unit of energy).

Two scaling facts follow from the cost model and are exposed for checking:
- at batch 1, a deeper model of the same size decodes slower than a wider one, because every
  layer pays fixed per-operator costs that do not shrink with width (Nemotron-Flash's finding);
- on a given roofline, the largest (so most accurate) model that meets a time-per-token budget
  grows with memory bandwidth, as decode reads every weight once per token (the roofline
  co-design scaling laws).
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from servesim.errors import ServesimError
from servesim.predictor.device_step import (
    Efficiency,
    Step,
    decode,
    kv_bytes,
    prefill,
    step_time,
    weight_bytes,
)
from servesim.spec.devices import Device
from servesim.spec.model import ModelSpec
from servesim.spec.quant import Quant

RANK_BY = ("tpot", "ttft", "throughput", "energy", "quality_per_joule", "quality")
MEM_HEADROOM = 0.9  # share of device memory weights and KV may fill


@dataclass(frozen=True)
class Budgets:
    """Limits a candidate must meet (None: no limit). SI units."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    min_tokens_per_s: float | None = None
    mem_bytes: float | None = None
    j_per_token: float | None = None


@dataclass(frozen=True)
class Candidate:
    """One model in one quantisation on one device, priced."""

    model: str
    quant: str
    device: str
    params_b: float
    mem_gb: float
    ttft_s: float
    tpot_s: float
    tokens_per_s: float
    j_per_token: float
    fits_memory: bool
    meets_budgets: bool
    why_not: str = ""
    quality: float | None = None
    quality_per_joule: float | None = None


def price(
    model: ModelSpec,
    quant: Quant,
    device: Device,
    prompt_tokens: int = 512,
    output_tokens: int = 128,
    batch: int = 1,
    eff: Efficiency | None = None,
    threads: int = 0,
) -> Candidate:
    """TTFT (one prompt), TPOT and tokens/s (a decode step of `batch` sequences midway through
    the output), energy per output token, and memory (weights plus the batch's KV)."""
    ctx = prompt_tokens + output_tokens
    mem = weight_bytes(model, quant) + kv_bytes(model, quant, ctx) * batch
    ttft = step_time(model, quant, device, prefill(prompt_tokens), eff, threads).seconds
    dec = step_time(
        model, quant, device, decode(batch, prompt_tokens + output_tokens // 2), eff, threads
    )
    fits = mem <= device.mem_bytes * MEM_HEADROOM
    return Candidate(
        model.name,
        quant.name,
        device.name,
        model.num_params() / 1e9,
        mem / 1e9,
        ttft,
        dec.seconds,
        batch / dec.seconds,
        dec.joules / batch,
        fits,
        fits,
        "" if fits else f"needs {mem / 1e9:.1f} GB of {device.mem_bytes / 1e9:.0f} GB",
    )


def apply_budgets(c: Candidate, b: Budgets) -> Candidate:
    """Mark whether a candidate meets the budgets, and say which it misses."""
    misses = [c.why_not] if c.why_not else []
    if b.ttft_s is not None and c.ttft_s > b.ttft_s:
        misses.append(f"TTFT {c.ttft_s * 1e3:.0f} ms > {b.ttft_s * 1e3:.0f} ms")
    if b.tpot_s is not None and c.tpot_s > b.tpot_s:
        misses.append(f"TPOT {c.tpot_s * 1e3:.1f} ms > {b.tpot_s * 1e3:.1f} ms")
    if b.min_tokens_per_s is not None and c.tokens_per_s < b.min_tokens_per_s:
        misses.append(f"{c.tokens_per_s:.1f} tokens/s < {b.min_tokens_per_s:g}")
    if b.mem_bytes is not None and c.mem_gb * 1e9 > b.mem_bytes:
        misses.append(f"memory {c.mem_gb:.1f} GB > {b.mem_bytes / 1e9:g} GB")
    if b.j_per_token is not None and c.j_per_token > b.j_per_token:
        misses.append(f"{c.j_per_token:.3f} J/token > {b.j_per_token:g}")
    return replace(c, meets_budgets=not misses, why_not="; ".join(misses))


def read_quality(path: str | Path) -> dict[str, float]:
    """A CSV of `model,score` rows (a header row naming them), e.g. published accuracies."""
    p = Path(path)
    if not p.is_file():
        raise ServesimError(f"Quality file {str(p)!r} does not exist; check the path.")
    out: dict[str, float] = {}
    with p.open(newline="", encoding="utf-8-sig") as f:  # a spreadsheet's byte-order mark
        rows = list(csv.reader(f))
    if not rows or [x.strip().lower() for x in rows[0][:2]] != ["model", "score"]:
        raise ServesimError(f"Quality file {str(p)!r} must start with the header `model,score`.")
    for i, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            score = float(row[1])
        except (IndexError, ValueError):
            raise ServesimError(
                f"Quality file {str(p)!r} line {i}: the score must be a number, got {row!r}."
            ) from None
        if not math.isfinite(score):
            raise ServesimError(f"Quality file {str(p)!r} line {i}: the score is not finite.")
        out[row[0].strip()] = score
    return out


def _quality_for(model: str, quality: dict[str, float]) -> float | None:
    if model in quality:
        return quality[model]
    short = model.rsplit("/", 1)[-1].lower()
    for k, v in quality.items():
        if k.rsplit("/", 1)[-1].lower() == short:
            return v
    return None


def choose(
    models: list[ModelSpec],
    quants: list[Quant],
    devices: list[Device],
    budgets: Budgets | None = None,
    quality: dict[str, float] | None = None,
    rank_by: str = "tpot",
    prompt_tokens: int = 512,
    output_tokens: int = 128,
    batch: int = 1,
) -> list[Candidate]:
    """Every model × quant × device, priced and budget-checked; those meeting the budgets first,
    each group ranked by `rank_by` (best first)."""
    if rank_by not in RANK_BY:
        raise ServesimError(f"Unknown ranking {rank_by!r}; use one of: {', '.join(RANK_BY)}.")
    if rank_by.startswith("quality") and not quality:
        raise ServesimError(
            f"Ranking by {rank_by} needs a quality file (--quality model,score CSV)."
        )
    b = budgets or Budgets()
    out = []
    for m in models:
        q_score = _quality_for(m.name, quality or {})
        for q in quants:
            for d in devices:
                c = apply_budgets(price(m, q, d, prompt_tokens, output_tokens, batch), b)
                if q_score is not None:
                    c = replace(c, quality=q_score, quality_per_joule=q_score / c.j_per_token)
                out.append(c)
    key = {
        "tpot": lambda c: c.tpot_s,
        "ttft": lambda c: c.ttft_s,
        "throughput": lambda c: -c.tokens_per_s,
        "energy": lambda c: c.j_per_token,
        "quality_per_joule": lambda c: -(c.quality_per_joule or -math.inf),
        "quality": lambda c: -(c.quality if c.quality is not None else -math.inf),
    }[rank_by]
    return sorted(out, key=lambda c: (not c.meets_budgets, key(c)))


def quality_latency_front(cands: list[Candidate]) -> list[Candidate]:
    """Candidates with a quality score that fit memory and that no other beats on both quality
    (higher) and TPOT (lower), by TPOT."""
    scored = [c for c in cands if c.quality is not None and c.fits_memory]
    front, best = [], -math.inf
    for c in sorted(scored, key=lambda c: (c.tpot_s, -(c.quality or 0.0))):
        if c.quality is not None and c.quality > best:
            front.append(c)
            best = c.quality
    return front


def as_dicts(cands: list[Candidate]) -> list[dict]:
    """Candidates as plain dictionaries for JSON."""
    return [asdict(c) for c in cands]


# ---- architecture scaling --------------------------------------------------------------------
def llama_like(params: float, num_layers: int, name: str = "") -> ModelSpec:
    """A Llama-shaped model of about `params` parameters at `num_layers` layers: head_dim 128,
    GQA 4:1, MLP 3.5× hidden (Llama-3 8B's ratio), 128k vocab, width solved from the size."""
    vocab = 128_256
    # per layer: attention 2.5·h² (q, o full; k, v a quarter) + MLP 3·3.5·h² = 13·h²
    a, b = 13.0 * num_layers, 2.0 * vocab
    h = (-b + math.sqrt(b * b + 4 * a * params)) / (2 * a)
    h = max(256, round(h / 128) * 128)
    heads = h // 128
    return ModelSpec(
        name=name or f"llama-like-{params / 1e9:.2g}B-L{num_layers}",
        model_type="llama",
        num_layers=num_layers,
        hidden_size=h,
        num_heads=heads,
        num_kv_heads=max(1, heads // 4) if heads % 4 == 0 else heads,
        head_dim=128,
        intermediate_size=round(3.5 * h / 256) * 256,
        vocab_size=vocab,
    )


def latency_optimal_size(
    device: Device,
    quant: Quant,
    tpot_s: float,
    depth_per_width: float = 1 / 128,
    sizes: list[float] | None = None,
    eff: Efficiency | None = None,
    context: int = 1024,
) -> float:
    """The largest model (parameters) on a grid whose batch-1 decode meets `tpot_s` on
    `device` and whose weights and KV fit its memory: the most accurate model for the budget,
    since loss falls with size. Models keep a fixed depth-to-width ratio (layers ≈
    `depth_per_width` × hidden). 0 when none meets it."""
    grid = sizes or [10 ** (8 + i / 8) for i in range(0, 29)]  # 100M .. 400B
    best = 0.0
    for n in grid:
        # layers from the aspect ratio: h ≈ layers / ratio and n ≈ 13·L·h² → L = (13 n r²)^(1/3)
        layers = max(2, round((n * depth_per_width**2 / 13.0) ** (1 / 3)))
        m = llama_like(n, layers)
        if weight_bytes(m, quant) + kv_bytes(m, quant, context) > device.mem_bytes * MEM_HEADROOM:
            continue
        t = step_time(m, quant, device, decode(1, context), eff).seconds
        if t <= tpot_s:
            best = max(best, n)
    return best


def decode_step(model: ModelSpec, quant: Quant, device: Device, step: Step) -> float:
    """Seconds of one step (a convenience for scaling studies)."""
    return step_time(model, quant, device, step).seconds

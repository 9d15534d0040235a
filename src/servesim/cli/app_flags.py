"""`simulate` flags for serving through a semantic cache (`sim.semantic_cache`) and for many
LoRA adapters on one replica (`sim.adapters`); each runs its own serving path and reports it."""

from __future__ import annotations

import argparse
from typing import Annotated, Any, Literal

from pydantic import Field

from servesim.cli.settings import Misuse, NonEmpty, NonNegFloat, PosInt, Settings


class AppSettings(Settings):
    """Semantic-cache and adapter settings (file keys as the flags, with underscores)."""

    cache_hit_rate: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    cache_categories: NonEmpty | None = None  # name:share:hit,... (category-aware)
    cache_lookup_ms: NonNegFloat = 10.0
    cache_on_hit: Literal["answer", "small_model"] = "answer"
    cache_small_model: NonEmpty | None = None
    cache_example_tokens: Annotated[int, Field(ge=0)] = 0
    lora_adapters: PosInt | None = None
    lora_slots: PosInt = 8
    lora_rank: PosInt = 16
    lora_zipf: NonNegFloat = 1.0

    def check_apps(self) -> None:
        """Refuse settings of a mode that is not on, and the two modes together."""
        cache = self.cache_hit_rate is not None or self.cache_categories is not None
        for key in ("cache_lookup_ms", "cache_on_hit", "cache_small_model", "cache_example_tokens"):
            if self.given(key) and not cache:
                raise Misuse(f"{{{key}}} shapes the semantic cache; add {{cache_hit_rate}}.")
        if self.cache_hit_rate is not None and self.cache_categories is not None:
            raise Misuse("Give {cache_hit_rate} or {cache_categories}, not both.")
        if self.cache_on_hit == "small_model" and cache and self.cache_small_model is None:
            raise Misuse(
                "{cache_on_hit} small_model needs {cache_small_model}, the model hits use."
            )
        for key in ("lora_slots", "lora_rank", "lora_zipf"):
            if self.given(key) and self.lora_adapters is None:
                raise Misuse(f"{{{key}}} shapes the adapters; add {{lora_adapters}}.")
        if cache and self.lora_adapters is not None:
            raise Misuse("{lora_adapters} and the semantic cache run separately; drop one.")


def add_app_args(p: argparse.ArgumentParser) -> None:
    """Add the semantic-cache and adapter flags to `simulate`."""
    c = p.add_argument_group("semantic / in-context cache (open-loop workloads)")
    c.add_argument("--cache-hit-rate", type=float, help="share of requests the cache serves")
    c.add_argument(
        "--cache-categories", help="category-aware hit rates: name:share:hit,... e.g. code:0.3:0.5"
    )
    c.add_argument("--cache-lookup-ms", type=float, help="lookup time every request pays (10)")
    c.add_argument("--cache-on-hit", help="answer (cached reply) or small_model (IC-Cache)")
    c.add_argument("--cache-small-model", help="model a hit goes to (same device, TP 1)")
    c.add_argument(
        "--cache-example-tokens", type=int, help="retrieved example tokens a small-model hit adds"
    )
    a = p.add_argument_group("many LoRA adapters (one replica, open-loop workloads)")
    a.add_argument("--lora-adapters", type=int, help="adapters the requests name (Zipf popular)")
    a.add_argument("--lora-slots", type=int, help="adapters resident per replica (8)")
    a.add_argument("--lora-rank", type=int, help="adapter rank (16)")
    a.add_argument("--lora-zipf", type=float, help="popularity exponent (1.0; 0 uniform)")


def _categories(text: str) -> dict[str, Any]:
    from servesim.sim.semantic_cache import CacheCategory

    out = {}
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            name, share, hit = parts[0], float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            raise Misuse(
                f"{{cache_categories}} takes name:share:hit,... e.g. code:0.3:0.5, got {item!r}"
            ) from None
        out[name] = CacheCategory(share, hit)
    return out


def run_app(
    s: AppSettings, dep: Any, work: Any, router: str = "round_robin", seed: int = 0
) -> dict[str, Any] | None:
    """Serve through the cache or with adapters if the settings ask for it (None otherwise):
    the summary figures, per-request arrays left out; `router` spreads a cache's misses and
    small-model hits over the replicas, `seed` (the run's --seed) draws which requests hit."""
    from dataclasses import replace

    from servesim.sim.workload import Workload

    s.check_apps()
    cache = s.cache_hit_rate is not None or s.cache_categories is not None
    if not cache and s.lora_adapters is None:
        return None
    if not isinstance(work, Workload):
        raise Misuse("The semantic cache and adapters take an open-loop workload, not {clients}.")
    if cache:
        from servesim.sim.semantic_cache import CacheCategory, SemanticCache, serve_with_cache
        from servesim.spec.model import load_model
        from servesim.spec.parallel import Parallel

        cats = (
            _categories(s.cache_categories)
            if s.cache_categories
            else {"all": CacheCategory(1.0, float(s.cache_hit_rate or 0.0))}
        )
        c = SemanticCache(
            cats, s.cache_lookup_ms / 1e3, s.cache_on_hit, s.cache_example_tokens, seed=seed
        )
        small = None
        if s.cache_small_model:
            small = replace(dep, model=load_model(s.cache_small_model), parallel=Parallel())
        out = serve_with_cache(work, dep, c, small, router)
        key = "semantic_cache"
    else:
        from servesim.sim.adapters import LoraAdapters, serve_with_adapters

        lora = LoraAdapters(s.lora_adapters or 1, s.lora_slots, s.lora_rank, s.lora_zipf)
        out = serve_with_adapters(dep, work, lora)
        key = "lora_adapters"
    return {key: {k: v for k, v in out.items() if not hasattr(v, "shape")}}

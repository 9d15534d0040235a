"""The planner's search space: a plan's spec, the candidates it enumerates, what pruning drops.

A plan names a model, a workload (a trace or synthetic mix; its arrival shape is scaled to each
probed rate), SLOs (TTFT and TPOT targets and the fraction of requests that must meet both) and
the hardware to consider. Every candidate is one replica's configuration — device, TP/PP,
engine/policy, batching limits, weight and KV formats — that `evaluate` prices with the
capacity search, `ranking` orders and `sizing` turns into fleets.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from functools import cache, lru_cache
from itertools import product
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor.fewshot_transfer import load_fit
from servesim.predictor.iteration import DEFAULT_LATENCY_MODEL
from servesim.predictor.roofline import KernelFit
from servesim.sim.deployment import Deployment
from servesim.sim.disagg import DisaggDeployment
from servesim.sim.metrics import Slo
from servesim.sim.policies import Policy
from servesim.sim.synthetic import parse_length, synthetic
from servesim.sim.workload import Workload
from servesim.spec.adaptive_depth import LayerSkipping
from servesim.spec.devices import Catalog, catalog
from servesim.spec.engine_profile import EngineProfile, get_engine
from servesim.spec.memory import engine_memory, memory_layout, speculative_state_copies
from servesim.spec.model import ModelSpec, load_model
from servesim.spec.parallel import Parallel
from servesim.spec.sampling import sorts_vocab
from servesim.spec.speculative import SpeculativeDecoding

# Bumped whenever `capacity.find_capacity` measures differently, so stores do not mix rules.
CAPACITY_RULE = "steady-window-1"

# Requests a plan's searches may draw from its trace or synthetic mix (then tiled) when the
# given number is too few for a steady state; pruning and exports use its longest request.
SOURCE_REQUESTS = 8192

# Batching presets (max_num_seqs, max_num_batched_tokens): latency-leaning, vLLM's H100 default,
# throughput-leaning.
DEFAULT_BATCHING: tuple[tuple[int, int], ...] = ((64, 2048), (256, 8192), (1024, 16384))


@dataclass(frozen=True)
class WorkloadSpec:
    """How to build the plan's workload in any process: a trace or a synthetic mix."""

    trace: str | None = "azure_conv"  # bundled name or a file path
    num_requests: int = 1500
    prompt: str | None = None  # synthetic length specs (used when trace is None)
    output: str | None = None
    arrival: str = "poisson"
    cv: float = 1.0
    seed: int = 0

    def build(self) -> Workload:
        """The workload at its own rate (the capacity search rescales it)."""
        return _workload(self)

    def source(self) -> Workload:
        """What longer workloads are drawn from: the first max(num_requests, 8192) requests of
        the trace (tiled past its end) or of the synthetic mix under the same seed."""
        return _workload(replace(self, num_requests=max(self.num_requests, SOURCE_REQUESTS)))

    def draw(self, n: int) -> Workload:
        """`n` requests from the source, for when `num_requests` is too few for a steady state
        (the source is tiled past its end, so no request is longer than `longest_tokens`)."""
        return self.source().tiled(n)

    def longest_tokens(self) -> int:
        """Prompt + output tokens of the longest request any search of the plan can simulate."""
        return max(_longest(self.build()), _longest(self.source()))


@lru_cache(maxsize=8)
def _workflow_longest(workflows: str) -> int:
    """The longest call among as many workflow instances as a capacity probe may draw
    (`workflow_capacity.MAX_WORKFLOWS`, at the searches' seed, 0)."""
    from servesim.planner.workflow_capacity import MAX_WORKFLOWS
    from servesim.sim.workflows import WorkflowWorkload, load_workflows

    wl = WorkflowWorkload(load_workflows(workflows), MAX_WORKFLOWS, 1.0)
    return int((wl.prompt_tokens + wl.output_tokens).max())


def _longest(w: Workload) -> int:
    return int((w.prompt_tokens + w.output_tokens).max())


@lru_cache(maxsize=16)
def _workload(spec: WorkloadSpec) -> Workload:
    from servesim.sim import traces as tracemod

    if spec.trace:
        name = spec.trace
        base = tracemod.bundled_or_file(name)
        n = spec.num_requests
        return base.tiled(n) if n > len(base) else base.head(n)
    prompt = parse_length(spec.prompt or "fixed:1024", "prompt")
    output = parse_length(spec.output or "fixed:256", "output")
    return synthetic(
        spec.num_requests, 1.0, prompt, output, arrival=spec.arrival, cv=spec.cv, seed=spec.seed
    )


@dataclass(frozen=True)
class Candidate:
    """One replica configuration the planner evaluates."""

    device: str
    tp: int
    pp: int = 1
    engine: str = "vllm"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    chunked_prefill: bool = True
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    mode: str = "colocated"  # or "disaggregated": the pools below, `tp`/`pp` unused
    prefill_tp: int = 0
    prefill_replicas: int = 0
    decode_tp: int = 0
    decode_replicas: int = 0
    num_draft_tokens: int = 0  # speculative draft tokens per step (0: no speculation)
    spec_tree_width: int = 1  # draft tree candidates per depth (1: a chain)

    @property
    def disaggregated(self) -> bool:
        """Whether prefill and decode run in separate pools."""
        return self.mode == "disaggregated"

    @property
    def devices_per_replica(self) -> int:
        """Devices one unit occupies: a replica, or one prefill:decode group."""
        if self.disaggregated:
            return self.prefill_tp * self.prefill_replicas + self.decode_tp * self.decode_replicas
        return self.tp * self.pp

    def key(self) -> str:
        """Stable identifier of the configuration (for the result store)."""
        doc = asdict(self)
        if not doc["num_draft_tokens"]:  # stores written before speculation keep their keys
            del doc["num_draft_tokens"]
        if doc["spec_tree_width"] == 1:  # and chains those written before draft trees
            del doc["spec_tree_width"]
        text = json.dumps(doc, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def label(self) -> str:
        """Human-readable one-liner."""
        par = f"tp{self.tp}" + (f"pp{self.pp}" if self.pp > 1 else "")
        if self.disaggregated:
            par = (
                f"P{self.prefill_replicas}xtp{self.prefill_tp}:D{self.decode_replicas}"
                f"xtp{self.decode_tp}"
            )
        spec = f" draft={self.num_draft_tokens}" if self.num_draft_tokens else ""
        if self.spec_tree_width > 1:
            spec += f"x{self.spec_tree_width}"
        return (
            f"{self.device} {par} {self.engine} seqs={self.max_num_seqs} "
            f"tokens={self.max_num_batched_tokens} w={self.weight_dtype} kv={self.kv_dtype}" + spec
        )


@dataclass(frozen=True)
class SearchSpace:
    """The axes the planner crosses; every combination is one candidate before pruning."""

    devices: tuple[str, ...] = ("h100_sxm", "a100_sxm", "l40s", "l4")
    tp: tuple[int, ...] = (1, 2, 4, 8)
    pp: tuple[int, ...] = (1,)
    engines: tuple[str, ...] = ("vllm", "sglang")
    batching: tuple[tuple[int, int], ...] = DEFAULT_BATCHING
    weight_dtypes: tuple[str, ...] = ()  # empty: the model's own format
    kv_dtypes: tuple[str, ...] = ("bf16",)
    chunked_prefill: tuple[bool, ...] = (True,)
    # Disaggregated prefill/decode pools: prefill:decode replica ratios to try (empty: none).
    # Each pool's TP comes from `tp`; pools share the first engine and each batching setting.
    pd_ratios: tuple[tuple[int, int], ...] = ()
    # Speculative draft tokens per step to try (0: off), with the plan's speculative method.
    speculative_k: tuple[int, ...] = (0,)
    # Draft tree widths (candidates per depth) to try at every k > 0 (1: a chain).
    speculative_tree_width: tuple[int, ...] = (1,)

    def speculation_axes(self) -> tuple[tuple[int, int], ...]:
        """(draft tokens, tree width) pairs to try: every width at each k > 0, a chain at 0."""
        pairs = (
            (k, w if k else 1) for k in self.speculative_k for w in self.speculative_tree_width
        )
        return tuple(dict.fromkeys(pairs))


@dataclass(frozen=True)
class PlanSpec:
    """Everything a plan depends on; its hash keys the result store so reruns resume."""

    model: str
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    slo: Slo = field(default_factory=Slo)
    target: float = 0.9
    rate_per_s: float | None = None  # the traffic to size for (converse search)
    devices_file: str | None = None
    fit_file: str | None = None
    rel_tol: float = 0.03
    latency_model: str = DEFAULT_LATENCY_MODEL  # auto, measured or roofline
    # Speculative decoding the candidates with num_draft_tokens > 0 run: method (mtp, eagle,
    # draft), the acceptance chain (empty: the method's sourced default) and a draft model.
    speculative: str | None = None
    acceptance: tuple[float, ...] = ()
    draft_model: str | None = None
    # Mirror-SD: every speculating candidate drafts on this many devices of this type beside
    # each replica, in parallel with verify, over this link (None: drafts in series).
    mirror_device: str | None = None
    mirror_devices: int = 1
    mirror_link: str = "nvlink"
    # Workflow applications (`sim.workflows`: a file or bundled example): capacity is then the
    # workflow rate meeting the workflows' end-to-end SLOs, scheduled by `workflow_policy`.
    workflows: str | None = None
    workflow_policy: str = "deadline"
    # Per-request layer skipping every candidate runs (FiRST): probability and correlation.
    skip_prob: float | None = None
    skip_correlation: float = 0.0
    # (engine, release) pairs: the release each engine's candidates serve, whose measured
    # kernel collection prices them (`EngineProfile.version`); an engine not named reads the
    # newest collection first.
    engine_versions: tuple[tuple[str, str], ...] = ()
    # How requests sample: "greedy" or "filtered" with top-k/top-p, which vLLM 0.11.1-0.15
    # does by sorting the vocabulary every step (`spec.sampling`, `predictor.sampler`).
    sampling: str = "greedy"

    def longest_tokens(self) -> int:
        """Prompt + output tokens of the longest request the plan's searches can simulate: its
        workflows' calls when it plans for workflows (their own lengths, context included),
        else its request workload's (`WorkloadSpec.longest_tokens`)."""
        if self.workflows is None:
            return self.workload.longest_tokens()
        return _workflow_longest(self.workflows)

    def engine(self, name: str) -> EngineProfile:
        """The engine profile a candidate of engine `name` runs (at its stated release)."""
        version = dict(self.engine_versions).get(name)
        engine = get_engine(name)
        sorts = sorts_vocab(engine.name, version or "", self.sampling == "filtered")
        return engine.with_overrides(version=version, sampler_sorts_vocab=sorts)

    def key(self) -> str:
        """Identifier of the question (model, workload, SLO) whose answers can be reused."""
        doc = {
            "model": self.model,
            "workload": asdict(self.workload),
            "slo": [self.slo.ttft_s, self.slo.tpot_s],
            "target": self.target,
            "devices_file": self.devices_file,
            "fit_file": self.fit_file,
            "rel_tol": self.rel_tol,
            # Results of an older capacity definition (counting warm-up and drain) differ.
            "capacity": CAPACITY_RULE,
        }
        if self.latency_model != "roofline":  # plans stored before the field keep their key
            doc["latency_model"] = self.latency_model
        if self.speculative is not None:
            doc["speculative"] = [self.speculative, list(self.acceptance), self.draft_model]
        if self.mirror_device is not None:
            doc["mirror"] = [self.mirror_device, self.mirror_devices, self.mirror_link]
        if self.workflows is not None:
            doc["workflows"] = [self.workflows, self.workflow_policy]
        if self.skip_prob is not None:
            doc["layer_skipping"] = [self.skip_prob, self.skip_correlation]
        if self.engine_versions:
            doc["engine_versions"] = [list(p) for p in sorted(self.engine_versions)]
        if self.sampling != "greedy":
            doc["sampling"] = self.sampling
        # Files the answers depend on count by what they hold, not only by their path: editing
        # a device's price or a trace in place must not bring back rows priced from the old one.
        files = {
            "devices_file": self.devices_file,
            "fit_file": self.fit_file,
            "workflows": self.workflows,
            "trace": self.workload.trace,
        }
        digests = {k: d for k, path in files.items() if (d := _file_digest(path)) is not None}
        if digests:
            doc["file_digests"] = digests
        return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _file_digest(path: str | None) -> str | None:
    """A digest of a file's bytes; None without a path or where none is readable (a bundled
    trace's name, say, whose contents ship with the package)."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return hashlib.sha1(f.read()).hexdigest()[:16]
    except OSError:
        return None


def enumerate_candidates(space: SearchSpace, model: ModelSpec) -> list[Candidate]:
    """Every combination of the search space's axes (colocated, then disaggregated groups)."""
    wdts = space.weight_dtypes or (model.weight_dtype,)
    colocated = [
        Candidate(
            device=device,
            tp=tp,
            pp=pp,
            engine=engine,
            max_num_seqs=seqs,
            max_num_batched_tokens=tokens,
            chunked_prefill=chunked,
            weight_dtype=w,
            kv_dtype=kv,
            num_draft_tokens=k,
            spec_tree_width=width,
        )
        for device, tp, pp, engine, (seqs, tokens), chunked, w, kv, (k, width) in product(
            space.devices,
            space.tp,
            space.pp,
            space.engines,
            space.batching,
            space.chunked_prefill,
            wdts,
            space.kv_dtypes,
            space.speculation_axes(),
        )
    ]
    disaggregated = [
        Candidate(
            device=device,
            tp=tp_d,
            engine=space.engines[0],
            max_num_seqs=seqs,
            max_num_batched_tokens=tokens,
            weight_dtype=w,
            kv_dtype=kv,
            mode="disaggregated",
            prefill_tp=tp_p,
            prefill_replicas=n_p,
            decode_tp=tp_d,
            decode_replicas=n_d,
            num_draft_tokens=k,
            spec_tree_width=width,
        )
        for device, tp_p, tp_d, (n_p, n_d), (seqs, tokens), w, kv, (k, width) in product(
            space.devices,
            space.tp,
            space.tp,
            space.pd_ratios,
            space.batching,
            wdts,
            space.kv_dtypes,
            space.speculation_axes(),
        )
    ]
    return colocated + disaggregated


@dataclass(frozen=True)
class Pruned:
    """A candidate removed before simulation, with the rule and the reason."""

    candidate: Candidate
    rule: str
    reason: str


def prune(
    candidates: list[Candidate],
    model: ModelSpec,
    catalog: Catalog,
    longest_request_tokens: int,
) -> tuple[list[Candidate], list[Pruned]]:
    """Drop candidates that cannot run, naming the rule that removed each one."""
    kept: list[Candidate] = []
    pruned: list[Pruned] = []
    for c in candidates:
        rule, reason = _prune_reason(c, model, catalog, longest_request_tokens)
        if rule:
            pruned.append(Pruned(c, rule, reason))
        else:
            kept.append(c)
    return kept, pruned


def _prune_reason(
    c: Candidate, model: ModelSpec, catalog: Catalog, longest: int
) -> tuple[str, str]:
    if c.disaggregated:
        node = catalog.get(c.device).max_devices_per_node
        if c.devices_per_replica > node:
            return (
                "disagg_exceeds_node",
                f"{c.devices_per_replica} devices of a prefill:decode group exceed one node "
                f"({node}); KV would cross the scale-out network",
            )
        for tp in (c.prefill_tp, c.decode_tp):
            rule, reason = _prune_reason(
                replace(c, mode="colocated", tp=tp), model, catalog, longest
            )
            if rule:
                return rule, reason
        return "", ""
    device = catalog.get(c.device)
    if c.tp > device.max_devices_per_node:
        return (
            "tp_exceeds_node",
            f"TP={c.tp} exceeds the {device.max_devices_per_node} devices of a node",
        )
    try:
        model.check_tp(c.tp)
    except ServesimError as exc:
        return "tp_splits_heads", str(exc)
    if model.num_layers < c.pp:
        return "pp_exceeds_layers", f"PP={c.pp} exceeds {model.num_layers} layers"
    m = model.with_dtypes(weight=c.weight_dtype, kv=c.kv_dtype).loaded(c.num_draft_tokens > 0)
    if c.kv_dtype == "fp8" and "fp8" not in device.peak_flops_per_s:
        return "no_fp8", f"{device.name} has no fp8 support for an fp8 KV cache"
    try:
        par = Parallel(tp=c.tp, pp=c.pp)
        engine = get_engine(c.engine)
        k = c.num_draft_tokens
        mem = memory_layout(
            m,
            device,
            par,
            max_batched_tokens=c.max_num_batched_tokens,
            max_num_seqs=min(c.max_num_seqs, 256),
            state_copies=speculative_state_copies(engine, k, 1 + k * max(c.spec_tree_width, 1)),
            **engine_memory(engine, device, par),
        )
    except ServesimError as exc:
        return "does_not_fit", str(exc)
    if mem.kv_tokens // c.pp < longest:
        return (
            "kv_too_small",
            f"the KV cache holds {mem.kv_tokens // c.pp} tokens, less than the longest request "
            f"({longest})",
        )
    return "", ""


@cache
def catalog_for(devices_file: str | None) -> Catalog:
    """`devices.catalog`, built once per worker process."""
    return catalog(devices_file)


@cache
def model_for(name: str) -> ModelSpec:
    return load_model(name)


@cache
def fit_for(path: str | None) -> KernelFit | None:
    """The kernel fit file of a plan (a few-shot one with its adaptation), read once."""
    return load_fit(path) if path else None


def deployment_for(
    spec: PlanSpec, c: Candidate, replicas: int = 1
) -> Deployment | DisaggDeployment:
    """The simulator's deployment for a candidate under a plan (`replicas` units of it)."""
    model = model_for(spec.model).with_dtypes(weight=c.weight_dtype, kv=c.kv_dtype)
    device = catalog_for(spec.devices_file).get(c.device)

    def pool(tp: int, pp: int, n: int) -> Deployment:
        return Deployment(
            model=model,
            device=device,
            parallel=Parallel(tp=tp, pp=pp),
            engine=spec.engine(c.engine),
            replicas=n,
            max_num_seqs=c.max_num_seqs,
            max_num_batched_tokens=c.max_num_batched_tokens,
            chunked_prefill=c.chunked_prefill,
            fit=fit_for(spec.fit_file),
            latency_model=spec.latency_model,
            speculative=speculative_for(spec, c.num_draft_tokens, c.spec_tree_width),
            layer_skipping=(
                LayerSkipping(spec.skip_prob, spec.skip_correlation)
                if spec.skip_prob is not None
                else None
            ),
            policy=Policy("deadline")
            if spec.workflows and spec.workflow_policy == "deadline"
            else None,
        )

    if not c.disaggregated:
        return pool(c.tp, c.pp, replicas)
    prefill = pool(c.prefill_tp, 1, c.prefill_replicas * replicas)
    decode = pool(c.decode_tp, 1, c.decode_replicas * replicas)
    # A group sits on one node (pruning ensures it), so its KV moves over the node's links.
    return DisaggDeployment(prefill, decode, link="nvlink")


@cache
def speculative_for(spec: PlanSpec, k: int, width: int = 1) -> SpeculativeDecoding | None:
    """The plan's speculative decoding at k draft tokens and tree width (None when k is 0):
    the first k rates of its acceptance chain, or its one rate at every position; with the
    plan's Mirror-SD draft devices if it names them."""
    if not k:
        return None
    if spec.speculative is None:
        raise ServesimError(
            f"A candidate drafts {k} tokens per step but the plan names no speculative method; "
            "give --speculative mtp|eagle|draft."
        )
    acc = spec.acceptance[:k] if len(spec.acceptance) > 1 else spec.acceptance
    draft = model_for(spec.draft_model) if spec.draft_model else None
    mirror = catalog_for(spec.devices_file).get(spec.mirror_device) if spec.mirror_device else None
    return SpeculativeDecoding(
        spec.speculative,
        k,
        acc,
        draft,
        seed=spec.workload.seed,
        tree_widths=(width,),
        mirror_device=mirror,
        mirror_devices=spec.mirror_devices,
        mirror_link=spec.mirror_link,
    )


def candidate_from_row(row: dict[str, Any]) -> Candidate:
    """Rebuild a Candidate from a result row."""
    fields = Candidate.__dataclass_fields__
    return Candidate(**{k: _plain(row[k]) for k in fields if k in row})


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v

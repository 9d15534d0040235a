"""Applications whose unit of work is a workflow: a DAG of LLM calls and tool calls.

An agent or a Text-to-SQL pipeline (HEXGEN-Text2SQL, arXiv:2505.05286) issues LLM calls that
wait for earlier calls and for tools (a SQL execution, a search), and LLMCompiler
(arXiv:2312.04511) plans function calls that run in parallel and join. The latency that
matters is the workflow's, from its arrival to its last node. `WorkflowWorkload` expands
workflow instances into the LLM requests the simulator serves and releases each request when
its predecessors are done (a tool call ends a drawn latency after its own predecessors), the
way a closed loop releases a client's next request. A call's prompt may include the outputs
of earlier calls (`context`).

Workflow-aware scheduling, as HEXGEN-Text2SQL's urgency ordering: each LLM call gets the latest
time it can start and still let its workflow meet its SLO (the workflow's deadline minus the
estimated time of the longest remaining path from this call, tools included), and the engine's
priority queue serves the earliest such time first. Per-request FCFS is the baseline.

Files (YAML or JSON): `workflows: [{name, slo_s, weight, nodes: [{name, kind: llm|tool,
after: [...], prompt_tokens, output_tokens, context: [...], latency_s, latency_cv, model}]}]`,
token counts as numbers or length specs (`lognormal:MEDIAN:P90`, `uniform:LO:HI`). A node's
`model` names the deployment that serves it when several models serve one application
(`serve_workflows`: a router model and a large one, say).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from servesim.errors import ServesimError
from servesim.sim.synthetic import LengthDist, as_length

NODE_KINDS = ("llm", "tool")
SCHEDULING = ("fcfs", "deadline")
BUNDLED = Path(__file__).resolve().parents[1] / "data" / "workflows"


@dataclass(frozen=True)
class WorkflowNode:
    """One step: an LLM call (prompt and output lengths; `context` names earlier calls whose
    outputs its prompt includes) or a tool call (median latency, lognormal spread `latency_cv`)."""

    name: str
    kind: str = "llm"
    after: tuple[str, ...] = ()
    prompt: LengthDist | None = None
    output: LengthDist | None = None
    context: tuple[str, ...] = ()
    latency_s: float = 0.0
    latency_cv: float = 0.0
    model: str = ""  # which deployment serves the call ("" the default one)


@dataclass(frozen=True)
class WorkflowSpec:
    """A workflow: its nodes (a DAG by `after`), the end-to-end SLO and its share of the mix."""

    name: str
    nodes: tuple[WorkflowNode, ...]
    slo_s: float
    weight: float = 1.0

    def __post_init__(self) -> None:
        where = f"Workflow {self.name!r}"
        if not self.nodes:
            raise ServesimError(f"{where} has no nodes; give at least one LLM call.")
        if not (self.slo_s > 0 and math.isfinite(self.slo_s)) or not self.weight > 0:
            raise ServesimError(f"{where}: slo_s and weight must be positive numbers.")
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ServesimError(f"{where} repeats a node name; name each node once.")
        known = set(names)
        for n in self.nodes:
            if n.kind not in NODE_KINDS:
                raise ServesimError(
                    f"{where}: node {n.name!r} has kind {n.kind!r}; use one of "
                    f"{', '.join(NODE_KINDS)}."
                )
            missing = [d for d in (*n.after, *n.context) if d not in known]
            if missing:
                raise ServesimError(
                    f"{where}: node {n.name!r} refers to {', '.join(missing)}, which is not a "
                    "node of this workflow."
                )
            if n.kind == "llm" and (n.prompt is None or n.output is None):
                raise ServesimError(
                    f"{where}: LLM node {n.name!r} needs prompt_tokens and output_tokens."
                )
            if n.kind == "tool" and not (n.latency_s >= 0 and n.latency_cv >= 0):
                raise ServesimError(
                    f"{where}: tool node {n.name!r} needs latency_s ≥ 0 and latency_cv ≥ 0."
                )
        self.order()  # raises on a cycle
        for n in self.nodes:
            ancestors = self.ancestors(n.name)
            bad = [c for c in n.context if c not in ancestors or self.node(c).kind != "llm"]
            if bad:
                raise ServesimError(
                    f"{where}: node {n.name!r} takes the output of {', '.join(bad)} as context, "
                    "but only earlier LLM calls it waits for (through `after`) can give one."
                )
        if not any(n.kind == "llm" for n in self.nodes):
            raise ServesimError(f"{where} has no LLM call; there is nothing to serve.")

    def node(self, name: str) -> WorkflowNode:
        """The node called `name`."""
        return self._by_name[name]

    def order(self) -> list[str]:
        """Node names in a topological order (predecessors first)."""
        return list(self._order)

    @cached_property
    def _by_name(self) -> dict[str, WorkflowNode]:
        return {n.name: n for n in self.nodes}

    @cached_property
    def _order(self) -> tuple[str, ...]:
        """Kahn's algorithm over `after` (computed once: the run replays it per instance)."""
        deps = {n.name: set(n.after) for n in self.nodes}
        out: list[str] = []
        ready = [n.name for n in self.nodes if not n.after]
        while ready:
            name = ready.pop(0)
            out.append(name)
            for n in self.nodes:
                if name in deps[n.name]:
                    deps[n.name].discard(name)
                    if not deps[n.name] and n.name not in out and n.name not in ready:
                        ready.append(n.name)
        if len(out) != len(self.nodes):
            raise ServesimError(
                f"Workflow {self.name!r} has a cycle in `after`; a workflow must be a DAG."
            )
        return tuple(out)

    def ancestors(self, name: str) -> set[str]:
        """Every node `name` waits for, directly or not."""
        seen: set[str] = set()
        stack = list(self.node(name).after)
        while stack:
            a = stack.pop()
            if a not in seen:
                seen.add(a)
                stack.extend(self.node(a).after)
        return seen


@dataclass(frozen=True)
class Estimate:
    """Per-token times the deadline scheduler plans with (from the deployment's predictor:
    a prefill token and a decode step at a typical batch)."""

    prefill_s_per_token: float = 1e-4
    tpot_s: float = 0.03

    @classmethod
    def for_deployment(cls, dep: Any) -> Estimate:
        """The speeds of `dep`'s predictor (a disaggregated one's prefill pool): a 1,024-token
        prefill per token and a decode step of up to 64 sequences (its batch limit if lower)."""
        seqs = dep.batching()[0] if hasattr(dep, "batching") else 64
        pred = getattr(dep, "prefill", dep).predictor()
        return cls(
            pred.step_s(0, 0, ((1024, 0),)) / 1024.0, pred.decode_step_coeffs(min(seqs, 64))[0]
        )


@dataclass
class WorkflowWorkload:
    """`num_workflows` workflow instances arriving as a Poisson process of `rate_per_s`, each
    of a spec drawn by weight; the simulator serves their LLM calls as they become ready.

    `scheduling`: `fcfs` (requests in arrival order, the engine's default) or `deadline`
    (each call's priority is its latest start time; run it with the `priority` policy).
    """

    specs: tuple[WorkflowSpec, ...]
    num_workflows: int
    rate_per_s: float
    seed: int = 0
    scheduling: str = "fcfs"
    estimate: Estimate = field(default_factory=Estimate)
    warmup_requests: int = 0  # the simulator's closed-loop interface: no warm-up phase

    def __post_init__(self) -> None:
        if not self.specs:
            raise ServesimError("A workflow workload needs at least one workflow.")
        if not isinstance(self.num_workflows, int) or self.num_workflows < 1:
            raise ServesimError(
                f"Number of workflows must be a whole number ≥ 1, got {self.num_workflows!r}."
            )
        if not (self.rate_per_s > 0 and math.isfinite(self.rate_per_s)):
            raise ServesimError(
                f"Workflow arrival rate must be a positive number per second, got "
                f"{self.rate_per_s!r}."
            )
        if self.scheduling not in SCHEDULING:
            raise ServesimError(
                f"Workflow scheduling {self.scheduling!r} is unknown; use one of "
                f"{', '.join(SCHEDULING)}."
            )
        self._expand()

    # ---- expansion ---------------------------------------------------------------------------
    def _expand(self) -> None:
        """Draw every instance's arrival, spec, lengths and tool latencies; number the LLM
        calls (request ids) in arrival order of their workflows."""
        rng = np.random.default_rng(self.seed)
        n = self.num_workflows
        self.workflow_arrival_s = np.cumsum(rng.exponential(1.0 / self.rate_per_s, n))
        weights = np.array([s.weight for s in self.specs])
        self.workflow_spec = rng.choice(len(self.specs), size=n, p=weights / weights.sum())
        prompts: list[int] = []
        outputs: list[int] = []
        priority: list[int] = []
        # Per instance: node name -> request id (LLM) or -1 - tool latency index (tool).
        self.instances: list[dict[str, int]] = []
        self.tool_latency_s: list[float] = []
        self.request_workflow: list[int] = []
        self.request_model: list[str] = []
        orders = [s.order() for s in self.specs]
        for w in range(n):
            spec = self.specs[int(self.workflow_spec[w])]
            ids: dict[str, int] = {}
            out_len: dict[str, int] = {}
            for name in orders[int(self.workflow_spec[w])]:
                node = spec.node(name)
                if node.kind == "tool":
                    sigma = math.sqrt(math.log1p(node.latency_cv**2))
                    lat = node.latency_s * float(np.exp(sigma * rng.standard_normal()))
                    ids[name] = -1 - len(self.tool_latency_s)
                    self.tool_latency_s.append(lat)
                    continue
                assert node.prompt is not None and node.output is not None
                own = int(node.prompt.sample(1, rng)[0])
                o = int(node.output.sample(1, rng)[0])
                out_len[name] = o
                ids[name] = len(prompts)
                prompts.append(own + sum(out_len[c] for c in node.context))
                outputs.append(o)
                self.request_workflow.append(w)
                self.request_model.append(node.model)
                priority.append(0)
            self.instances.append(ids)
        self.prompt_tokens = np.array(prompts, dtype=np.int64)
        self.output_tokens = np.array(outputs, dtype=np.int64)
        self.num_requests = len(prompts)
        self.priority = np.array(priority, dtype=np.int64) if self.scheduling != "fcfs" else None
        if self.priority is not None:
            for w, ids in enumerate(self.instances):
                for name, latest in self._latest_starts(w).items():
                    if ids[name] >= 0:
                        self.priority[ids[name]] = round(latest * 1e6)

    def _node_s(self, w: int, name: str) -> float:
        """Estimated duration of one node of instance w (a tool: its drawn latency)."""
        rid = self.instances[w][name]
        if rid < 0:
            return self.tool_latency_s[-1 - rid]
        e = self.estimate
        return self.prompt_tokens[rid] * e.prefill_s_per_token + self.output_tokens[rid] * e.tpot_s

    def _latest_starts(self, w: int) -> dict[str, float]:
        """Latest start of each node that still lets instance w meet its SLO: the deadline
        minus the longest estimated path from the node to the end."""
        spec = self.specs[int(self.workflow_spec[w])]
        order = spec.order()
        tail: dict[str, float] = {}
        for name in reversed(order):
            after_me = [n.name for n in spec.nodes if name in n.after]
            tail[name] = self._node_s(w, name) + max((tail[c] for c in after_me), default=0.0)
        deadline = float(self.workflow_arrival_s[w]) + spec.slo_s
        return {name: deadline - tail[name] for name in order}

    # ---- the simulator's interface -----------------------------------------------------------
    def pacer(self) -> WorkflowPacer:
        """A fresh per-run release schedule (the simulator drives it)."""
        return WorkflowPacer(self)

    def outcomes(self, finish_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(end-to-end seconds, SLO met) of every workflow instance from the requests' finish
        times (indexed by request id; tools end their drawn latency after their predecessors;
        an unfinished call, -1, makes its workflow miss)."""
        e2e = np.zeros(self.num_workflows)
        met = np.zeros(self.num_workflows, dtype=bool)
        for w, ids in enumerate(self.instances):
            spec = self.specs[int(self.workflow_spec[w])]
            t0 = float(self.workflow_arrival_s[w])
            end = _timeline(spec, ids, t0, finish_s, self.tool_latency_s)
            unfinished = any(rid >= 0 and finish_s[rid] < 0 for rid in ids.values())
            e2e[w] = math.inf if unfinished else max(end.values()) - t0
            met[w] = e2e[w] <= spec.slo_s
        return e2e, met

    def report(self, finish_s: np.ndarray) -> dict[str, Any]:
        """Per-workflow end-to-end latency and SLO attainment from the requests' finish times
        (indexed by request id)."""
        e2e, met = self.outcomes(finish_s)
        by_name: dict[str, dict[str, float]] = {}
        for i, spec in enumerate(self.specs):
            sel = self.workflow_spec == i
            if sel.any():
                by_name[spec.name] = {
                    "workflows": int(sel.sum()),
                    "e2e_p50_s": float(np.median(e2e[sel])),
                    "e2e_p90_s": float(np.quantile(e2e[sel], 0.9)),
                    "slo_s": spec.slo_s,
                    "slo_attainment": float(met[sel].mean()),
                }
        return {
            "workflows": self.num_workflows,
            "llm_calls": self.num_requests,
            "e2e_p50_s": float(np.median(e2e)),
            "e2e_p90_s": float(np.quantile(e2e, 0.9)),
            "slo_attainment": float(met.mean()),
            "by_workflow": by_name,
        }


def _timeline(
    spec: WorkflowSpec,
    ids: dict[str, int],
    t0: float,
    finish_s: np.ndarray,
    tool_latency_s: list[float],
) -> dict[str, float]:
    """When each node of one instance ended (LLM calls from the run, tools from their draws)."""
    end: dict[str, float] = {}
    for name in spec.order():
        rid = ids[name]
        if rid >= 0:
            end[name] = float(finish_s[rid])
        else:
            node = spec.node(name)
            start = max((end[a] for a in node.after), default=t0)
            end[name] = start + tool_latency_s[-1 - rid]
    return end


class WorkflowPacer:
    """One run of a workflow workload: `start` gives the calls ready at their workflow's
    arrival, `finished(t, rid)` the calls a finished one released (with tools in between)."""

    def __init__(self, wl: WorkflowWorkload) -> None:
        self.wl = wl
        self.waiting: dict[tuple[int, str], int] = {}  # (instance, node) -> predecessors left
        self.ready_s: dict[tuple[int, str], float] = {}  # latest predecessor end so far
        self.node_of: dict[int, tuple[int, str]] = {}
        for w, ids in enumerate(wl.instances):
            spec = wl.specs[int(wl.workflow_spec[w])]
            for node in spec.nodes:
                self.waiting[(w, node.name)] = len(node.after)
                self.ready_s[(w, node.name)] = float(wl.workflow_arrival_s[w])
                if ids[node.name] >= 0:
                    self.node_of[ids[node.name]] = (w, node.name)
        self.children: list[dict[str, list[str]]] = [
            {n.name: [m.name for m in s.nodes if n.name in m.after] for n in s.nodes}
            for s in wl.specs
        ]

    def _release(self, w: int, name: str, t: float, out: list[tuple[float, int]]) -> None:
        """Node `name` of instance w ended at t: count it off its children; a child whose
        predecessors are all done starts (an LLM call is sent, a tool runs and ends later)."""
        kids = self.children[int(self.wl.workflow_spec[w])][name]
        for c in kids:
            key = (w, c)
            self.ready_s[key] = max(self.ready_s[key], t)
            self.waiting[key] -= 1
            if self.waiting[key] == 0:
                self._start(w, c, self.ready_s[key], out)

    def _start(self, w: int, name: str, t: float, out: list[tuple[float, int]]) -> None:
        rid = self.wl.instances[w][name]
        if rid >= 0:
            out.append((t, rid))
        else:
            self._release(w, name, t + self.wl.tool_latency_s[-1 - rid], out)

    def start(self) -> list[tuple[float, int]]:
        """The calls every workflow starts with (tools first, if it starts with one)."""
        out: list[tuple[float, int]] = []
        for w in range(self.wl.num_workflows):
            spec = self.wl.specs[int(self.wl.workflow_spec[w])]
            for node in spec.nodes:
                if not node.after:
                    self._start(w, node.name, float(self.wl.workflow_arrival_s[w]), out)
        return sorted(out, key=lambda x: x[1])

    def finished(self, t: float, rid: int = -1) -> list[tuple[float, int]]:
        """LLM call `rid` ended at t: the calls it released."""
        out: list[tuple[float, int]] = []
        w, name = self.node_of[rid]
        self._release(w, name, t, out)
        return sorted(out, key=lambda x: x[1])


# ---- files -----------------------------------------------------------------------------------
def _length(value: Any, what: str) -> LengthDist:
    try:
        return as_length(value if not isinstance(value, float) else int(value))
    except ServesimError as exc:
        raise ServesimError(f"{what}: {exc}") from None


def spec_from_dict(doc: dict[str, Any], origin: str = "workflow") -> WorkflowSpec:
    """A workflow from its parsed YAML/JSON mapping."""
    if not isinstance(doc, dict) or "nodes" not in doc or "name" not in doc:
        raise ServesimError(
            f"{origin}: each workflow needs `name`, `slo_s` and `nodes` (a list of steps)."
        )
    nodes = []
    allowed = {
        "name",
        "kind",
        "after",
        "prompt_tokens",
        "output_tokens",
        "context",
        "latency_s",
        "latency_cv",
        "model",
    }
    for raw in doc["nodes"] or []:
        if not isinstance(raw, dict) or "name" not in raw:
            raise ServesimError(f"{origin}: every node needs a `name`.")
        extra = set(raw) - allowed
        if extra:
            raise ServesimError(
                f"{origin}: node {raw['name']!r} has unknown keys {', '.join(sorted(extra))}; "
                f"use {', '.join(sorted(allowed))}."
            )
        where = f"{origin}: node {raw['name']!r}"
        kind = str(raw.get("kind", "llm"))
        nodes.append(
            WorkflowNode(
                name=str(raw["name"]),
                kind=kind,
                after=tuple(str(a) for a in raw.get("after") or ()),
                prompt=_length(raw["prompt_tokens"], f"{where} prompt_tokens")
                if "prompt_tokens" in raw
                else None,
                output=_length(raw["output_tokens"], f"{where} output_tokens")
                if "output_tokens" in raw
                else None,
                context=tuple(str(c) for c in raw.get("context") or ()),
                latency_s=float(raw.get("latency_s", 0.0)),
                latency_cv=float(raw.get("latency_cv", 0.0)),
                model=str(raw.get("model", "")),
            )
        )
    try:
        slo = float(doc.get("slo_s", "nan"))
        weight = float(doc.get("weight", 1.0))
    except (TypeError, ValueError):
        raise ServesimError(f"{origin}: slo_s and weight must be numbers.") from None
    return WorkflowSpec(str(doc["name"]), tuple(nodes), slo, weight)


def load_workflows(path_or_name: str) -> tuple[WorkflowSpec, ...]:
    """Workflows from a YAML/JSON file, or a bundled example by name (`text2sql`,
    `function_calling`)."""
    p = Path(path_or_name)
    if not p.exists():
        bundled = BUNDLED / f"{path_or_name}.yaml"
        if not bundled.exists():
            names = ", ".join(sorted(f.stem for f in BUNDLED.glob("*.yaml")))
            raise ServesimError(
                f"Workflow file {path_or_name!r} does not exist and is not a bundled example "
                f"({names}); give a YAML or JSON file."
            )
        p = bundled
    try:
        text = p.read_text(encoding="utf-8-sig")  # a Windows editor's byte-order mark too
        doc = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ServesimError(f"Cannot read workflows from {p}: {exc}".split("\n")[0]) from None
    items = doc.get("workflows") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise ServesimError(f"{p}: expected a top-level `workflows:` list of workflows.")
    return tuple(spec_from_dict(d, f"{p.name}") for d in items)


# ---- several models ----------------------------------------------------------------------------
FIXED_POINT_ROUNDS = 12


def release_times(wl: WorkflowWorkload, finish_s: np.ndarray) -> np.ndarray:
    """When each LLM call is sent, given every call's finish time: its workflow's arrival for
    a first call, else the latest end of its predecessors (tools their drawn latency later)."""
    sent = np.zeros(wl.num_requests)
    for w, ids in enumerate(wl.instances):
        spec = wl.specs[int(wl.workflow_spec[w])]
        t0 = float(wl.workflow_arrival_s[w])
        end: dict[str, float] = {}
        for name in spec.order():
            node = spec.node(name)
            start = max((end[a] for a in node.after), default=t0)
            rid = ids[name]
            if rid >= 0:
                sent[rid] = start
                end[name] = max(float(finish_s[rid]), start)
            else:
                end[name] = start + wl.tool_latency_s[-1 - rid]
    return sent


def serve_workflows(
    deployments: dict[str, Any], wl: WorkflowWorkload, router: str = "round_robin"
) -> dict[str, Any]:
    """Serve a workflow workload whose calls go to several deployments (`deployments[model]`,
    "" the default; `router` spreads each one's calls over its replicas): each deployment
    serves its calls as an open loop released when their
    predecessors end, found by fixed point — simulate every deployment with the current
    release times, recompute the releases from the finishes, repeat until no release moves by
    more than a millisecond (each round settles at least one more level of the DAGs, though
    calls of different levels share the deployments' queues). Returns the per-request finish
    times (`finish_s`), the rounds taken, the last round's largest release shift
    (`shift_s`: under a millisecond when it converged) and `report`."""
    from servesim.sim.simulate import simulate
    from servesim.sim.workload import Workload

    models = np.array(wl.request_model, dtype=object)
    missing = sorted(set(models) - set(deployments))
    if missing:
        raise ServesimError(
            f"Workflow calls name model(s) {', '.join(repr(m) for m in missing)} that no "
            "deployment serves; give a deployment for each."
        )
    finish = np.zeros(wl.num_requests)
    sent = release_times(wl, finish)
    rounds, moved = 0, 0.0
    for i in range(1, FIXED_POINT_ROUNDS + 1):
        rounds = i
        for name, dep in deployments.items():
            idx = np.flatnonzero(models == name)
            if not len(idx):
                continue
            order = idx[np.argsort(sent[idx], kind="stable")]
            prio = None if wl.priority is None else wl.priority[order]
            w = Workload(
                sent[order], wl.prompt_tokens[order], wl.output_tokens[order], priority=prio
            )
            cols = simulate(dep, w, router=router).columns()
            by_id = np.argsort(cols["request_id"])
            finish[order] = cols["finish_s"][by_id]
        new = release_times(wl, finish)
        moved = float(np.max(np.abs(new - sent))) if len(new) else 0.0
        sent = new
        if moved < 1e-3:
            break
    return {"finish_s": finish, "rounds": rounds, "shift_s": moved, "report": wl.report(finish)}

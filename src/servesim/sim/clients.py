"""The benchmark clients measured serving numbers come from, as `ClosedLoop` presets: how many
requests they send per client, whether prompt and output lengths vary around the nominal
ISL/OSL, the warm-up phase, and how the first requests go out. Mirror a benchmark by naming its
client (`client_protocol(name).closed_loop(clients, isl, osl)`; CLI `--client-protocol`).

What every one of them does (read from their sources): `--max-concurrency N` (aiperf
`--concurrency N`) with no request rate opens all N slots at once and sends the next request the
moment one ends (an asyncio semaphore); requests stream, and `ignore_eos` makes every request
generate exactly its output length. None adds a think time or a per-request delay of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from servesim.errors import ServesimError
from servesim.sim.synthetic import ClosedLoop, range_ratio_length


@dataclass(frozen=True)
class ClientProtocol:
    """One benchmark client's settings. `requests_per_client` and `warmup_per_client` are
    multiples of the concurrency (the clients below size their runs that way); `range_ratio`
    spreads lengths by `convention` (see `range_ratio_length`); `ramp_s` and
    `request_rate_per_s` as in `ClosedLoop`."""

    name: str
    source: str  # where the settings are read from
    requests_per_client: int
    warmup_per_client: int = 0
    range_ratio: float = 0.0
    convention: str = "symmetric"
    ramp_s: float = 0.0
    request_rate_per_s: float = math.inf
    dataset_entries: int = 0  # distinct prompts the client cycles through (0: all new)
    dataset_sampling: str = "shuffle"
    warmup_repeats_first: bool = False  # warm-ups resend the first measured request

    def closed_loop(
        self,
        clients: int,
        isl: int,
        osl: int,
        num_requests: int | None = None,
        range_ratio: float | None = None,
        seed: int = 0,
        jitter_s: float = 0.0,
    ) -> ClosedLoop:
        """The closed loop this client runs at `clients` concurrency for nominal lengths
        isl/osl: `num_requests` measured requests (default requests_per_client × clients)
        after its warm-up; `range_ratio` overrides the client's length spread."""
        r = self.range_ratio if range_ratio is None else range_ratio
        measured = self.requests_per_client * clients if num_requests is None else num_requests
        warmup = self.warmup_per_client * clients
        return ClosedLoop(
            clients,
            warmup + measured,
            range_ratio_length(isl, r, self.convention),
            range_ratio_length(osl, r, self.convention),
            seed=seed,
            jitter_s=jitter_s,
            ramp_s=self.ramp_s,
            request_rate_per_s=self.request_rate_per_s,
            warmup_requests=warmup,
            dataset_entries=self.dataset_entries,
            dataset_sampling=self.dataset_sampling,
            warmup_repeats_first=self.warmup_repeats_first,
        )


# vLLM `vllm bench serve` defaults (vllm/benchmarks/serve.py and datasets.py): --request-rate
# inf, --random-range-ratio 0.0 over [L(1-r), L(1+r)], --num-warmups 0, --num-prompts 1000
# (here 10 per client; set num_requests for another count).
VLLM_BENCH_SERVE = ClientProtocol(
    "vllm_bench_serve",
    "github.com/vllm-project/vllm vllm/benchmarks/serve.py, vllm/benchmarks/datasets.py",
    requests_per_client=10,
)

# InferenceX (InferenceMAX) single-node runs, github.com/SemiAnalysisAI/InferenceX
# benchmarks/benchmark_lib.sh run_benchmark_serving: utils/bench_serving/benchmark_serving.py
# with --max-concurrency CONC --request-rate inf --ignore-eos --num-warmups 2*CONC,
# --num-prompts CONC*10 (benchmarks/single_node/*.sh) and --random-range-ratio
# $RANDOM_RANGE_RATIO = 0.8 (.github/workflows/benchmark-tmpl.yml), which that fork draws
# uniform on [int(L*0.8), L]. Its warm-ups all send the run's first prompt again
# (benchmark_serving.py `benchmark`: `test_prompt, ... = input_requests[0]`, then
# `num_warmups` copies of that request under the same concurrency limit).
INFERENCEX = ClientProtocol(
    "inferencex",
    "github.com/SemiAnalysisAI/InferenceX benchmarks/benchmark_lib.sh (since 2026-01-21)",
    requests_per_client=10,
    warmup_per_client=2,
    range_ratio=0.8,
    convention="below",
    warmup_repeats_first=True,
)

# InferenceX multi-node (disaggregated) runs use srt-slurm's sa-bench
# (github.com/NVIDIA/srt-slurm src/srtctl/benchmarks/scripts/sa-bench/bench.sh): the same
# client and draw, range ratio 0.8, CONC*10 prompts after a separate 2*CONC warm-up run of
# benchmark_serving.py with its own random prompts (not one prompt repeated).
INFERENCEX_MULTINODE = ClientProtocol(
    "inferencex_multinode",
    "github.com/NVIDIA/srt-slurm src/srtctl/benchmarks/scripts/sa-bench/bench.sh",
    requests_per_client=10,
    warmup_per_client=2,
    range_ratio=0.8,
    convention="below",
)

# InferenceX before 2026-01-21 (commit d053ae24, "adding warmup (#480)" added --num-warmups):
# the same client without warm-up requests (its one initial test prompt ends before the run).
INFERENCEX_2025 = ClientProtocol(
    "inferencex_2025",
    "github.com/SemiAnalysisAI/InferenceX benchmarks/benchmark_lib.sh before d053ae24",
    requests_per_client=10,
    range_ratio=0.8,
    convention="below",
)

# aiconfigurator's benchmark (github.com/ai-dynamo/aiconfigurator src/aiconfigurator/generator/
# config/backend_templates/benchmark/bench_run.sh.j2): `aiperf profile --concurrency C
# --num-requests C*20 --warmup-request-count C*2 --isl/--osl with --isl-stddev/--osl-stddev 0
# (deployment_config.yaml defaults) --streaming`, ignore_eos, no ramp. aiperf
# (github.com/ai-dynamo/aiperf aiperf/timing/request_rate_strategy.py, concurrency burst) drops
# a credit per free semaphore slot; the warm-up phase ends before profiling starts
# (aiperf/timing/credit_issuing_strategy.py).
# Prompt reuse: bench_run.sh passes no --num-dataset-entries, so aiperf's synthetic dataset
# would hold its default 100 prompts (aiperf/common/config/config_defaults.py
# NUM_DATASET_ENTRIES = 100, "reused until benchmarking is complete"), picked by its shuffle
# sampler, and vLLM and SGLang cache prefixes by default. The measured aiperf rows show no such
# reuse, though: Qwen3-32B on 8 H100s (SGLang, 4,096 x 128 tokens, 128 clients) has a TTFT of
# 5.6 s, what every prompt prefilled in full gives (6.3 s simulated), not what 100 cached prompts
# give (0.6 s); vLLM's TPOTs say the same. So the preset sends new prompts; `dataset_entries`
# (CLI --prompt-pool 100) mirrors a run that does reuse them.
AIPERF = ClientProtocol(
    "aiperf",
    "github.com/ai-dynamo/aiconfigurator bench_run.sh.j2 (aiperf profile)",
    requests_per_client=20,
    warmup_per_client=2,
)


# All clients at 0 with fixed lengths and no warm-up phase: servesim's closed loop before the
# client protocols (every round phase-locked when lengths are fixed).
LOCKSTEP = ClientProtocol("lockstep", "servesim", requests_per_client=10)

PROTOCOLS = (
    VLLM_BENCH_SERVE, INFERENCEX, INFERENCEX_MULTINODE, INFERENCEX_2025, AIPERF, LOCKSTEP,
)  # fmt: skip


def client_protocol(name: str) -> ClientProtocol:
    """The preset called `name`."""
    for p in PROTOCOLS:
        if p.name == name:
            return p
    names = ", ".join(p.name for p in PROTOCOLS)
    raise ServesimError(f"Client protocol {name!r} is unknown; use one of {names}.")

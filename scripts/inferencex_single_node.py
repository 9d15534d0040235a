"""Regenerate data/inferencex/single_node_configs.csv: InferenceX's colocated deployments.

InferenceX (github.com/SemiAnalysisAI/InferenceX, Apache-2.0) benchmarks each colocated
(single-node) deployment from an entry of `.github/configs/nvidia-master.yaml` (later
`configs/nvidia-master.yaml`): per model × GPU × framework × precision an `image` (the engine's
container tag) and per ISL/OSL a search space of `tp`, `ep`, `dp-attn`, `spec-decoding` and a
concurrency range (`conc-start` doubling up to `conc-end`). Its dashboard rows say the model,
GPU, engine, precision, lengths, parallelism, concurrency, the day and the image, but not
whether speculative decoding (MTP) ran: the same deployment is often benchmarked with and
without it, and its TPOT differs by up to 2×. For MTP items the draft tokens per step come from
the launch script the entry runs at that commit (`benchmarks/single_node/<prefix>_<precision>_
<gpu>[_trt]_mtp.sh`, earlier `benchmarks/..._slurm.sh`). This table lets `benchmarks/silicon.py`
tell them apart by the image and day, as `scripts/inferencex_layouts.py` does for disaggregated
rows.

    python scripts/inferencex_single_node.py INFERENCEX_GIT [--dates D ...] [--out F]

Without `--dates`, every day of the source's span is read (as scripts/inferencex_layouts.py
does), and an item's days in effect are written as runs `D1..D2`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inferencex_layouts import (
    CONFIG_PATHS,
    MODELS,
    commit_at,
    every_day,
    git,
    master_config,
    write_merged,
)

ROOT = Path(__file__).resolve().parents[1]
# What a launch script sets that the simulation uses (`launch_settings`): each a number, an
# expression in the runner's variables (ISL, OSL, CONC, TP, EP_SIZE) or '' (not set, or set
# differently in different branches, so unknown) ...
NUMERIC_LAUNCH_FIELDS = (
    "mem_fraction",
    "token_budget",
    "max_seqs",
    "graph_max_bs",
    "recv_interval",
    "prefill_graphs",
    "stream_interval",
    "postprocess_workers",
)
# ... or a name (a format, a kernel family, a switch), kept as text.
TEXT_LAUNCH_FIELDS = (
    "ssm_dtype",
    "ar_fusion",
    "ar_fusion_mib",
    "mxfp4_activation",
    "moe_backend",
    "prefix_cache",
)
LAUNCH_FIELDS = ("kv_cache_dtype", *NUMERIC_LAUNCH_FIELDS, *TEXT_LAUNCH_FIELDS)
# The runner's variables a script's values may depend on (runners/launch_*.sh export them).
RUNNER_VARS = ("ISL", "OSL", "CONC", "TP", "EP_SIZE")
OUT = ROOT / "data" / "inferencex" / "single_node_configs.csv"
FIELDS = (
    "config_key",
    "model_prefix",
    "gpu",
    "framework",
    "precision",
    "image",
    "isl",
    "osl",
    "tp",
    "ep",
    "dp_attn",
    "spec_decoding",
    "num_draft_tokens",
    "script",
    *LAUNCH_FIELDS,
    "concurrencies",
    "source_file",
    "days_in_effect",
    "source_commits",
    "script_commits",
)
WHEN = ("days_in_effect", "source_commits", "script_commits")
# Where an entry's launch script has lived: benchmarks/single_node/ since early 2026, before
# that benchmarks/<name>.sh, and earlier still benchmarks/<name>_slurm.sh (or _docker.sh).
SCRIPT_PATHS = (
    "benchmarks/single_node/{}.sh",
    "benchmarks/{}.sh",
    "benchmarks/{}_slurm.sh",
    "benchmarks/{}_docker.sh",
)


def concurrencies(item: dict[str, object]) -> list[int]:
    """The concurrencies a search-space item benchmarks: `conc-list`, or `conc-start`
    doubling up to `conc-end` (InferenceX's matrix generator)."""
    if item.get("conc-list"):
        return [int(c) for c in item["conc-list"]]  # type: ignore[union-attr]
    start, end = int(item.get("conc-start") or 0), int(item.get("conc-end") or 0)
    out, c = [], start
    while 0 < c <= end:
        out.append(c)
        c *= 2
    return out


def draft_tokens(script: str, dp_attn: bool) -> str:
    """Draft tokens per step an MTP launch script sets: TensorRT-LLM's `MTP=N`
    (`num_nextn_predict_layers`), with the value of the `if [[ "$DP_ATTENTION" == "true" ]]`
    branch under attention DP and of the other branch (or the default before it) otherwise;
    SGLang's `SPECULATIVE_NUM_STEPS=N` or a literal `--speculative-num-steps N` (its draft
    passes; later scripts, e.g. qwen3.5_fp8_b300_mtp.sh, write the flag); vLLM's
    `"num_speculative_tokens": N` in `--speculative-config`. '' when it sets none."""
    for pattern in (
        r"^SPECULATIVE_NUM_STEPS=(\d+)",
        r"--speculative-num-steps[= ]+(\d+)",
        r"num_speculative_tokens\\?\"?\s*:\s*(\d+)",
    ):
        m = re.search(pattern, script, re.M)
        if m:
            return m.group(1)
    value = {True: "", False: ""}
    branch = None  # None: top level; True/False: inside the DP_ATTENTION if/else
    for line in script.splitlines():
        text = line.strip()
        if re.match(r'if \[\[ "\$DP_ATTENTION" == "true" \]\]', text):
            branch = True
        elif branch is not None and text == "else":
            branch = False
        elif branch is not None and text == "fi":
            branch = None
        m = re.match(r"MTP=(\d+)$", text)
        if m:
            if branch is None:
                value = {True: m.group(1), False: m.group(1)}
            else:
                value[branch] = m.group(1)
    return value[dp_attn]


_TEST_OPS = {"-eq": "==", "-ne": "!=", "-ge": ">=", "-gt": ">", "-le": "<=", "-lt": "<"}
# `NAME=value` (one word) or `NAME=$(( arithmetic ))` (spaces allowed inside), as one line.
_ASSIGNMENT = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(\$\(\(.*\)\)|\S*)")


def _assignment(text: str) -> tuple[str, str] | None:
    """(name, value) of a shell assignment line, quotes dropped; a `true`/`false` switch reads
    as 1/0 (`PIECEWISE_CUDA_GRAPHS="true"`); None for any other line."""
    m = _ASSIGNMENT.fullmatch(text)
    if not m:
        return None
    value = m.group(2).strip("'\"")
    return m.group(1), {"true": "1", "false": "0"}.get(value, value)


def _shell_test(text: str, values: dict[str, str] | None = None) -> str | None:
    """A bash `if`/`elif` condition as an expression in RUNNER_VARS (`CONC>=16`, tests joined
    by `&`/`|`), or None when it tests anything else (a string, a file, a variable neither a
    runner's nor among the script's own `values` so far: dsr1_fp8_h200_trt_mtp.sh clamps its
    `MAX_BATCH_SIZE=$((CONC/TP))` with `if [[ $MAX_BATCH_SIZE -lt 1 ]]`).
    A test compares a runner variable with a number, numerically (`-ge`) or as text (`"$ISL"
    == "1024"`, the form of dsr1_fp8_b200_trt.sh); `&&` and `||` join tests inside one `[[ ]]`
    as between them (bash gives `&&` the higher precedence, as the expression does)."""
    m = re.fullmatch(r"(?:el)?if\s+(.*?)\s*;\s*then", text)
    if not m:
        return None
    cond = re.sub(r"(?<!\S)\[\[?|\]\]?(?!\S)", " ", m.group(1))  # the brackets, not `$((`
    parts = re.split(r"\s*(\|\||&&)\s*", cond.strip())
    out = []
    for part in parts:
        if part in ("||", "&&"):
            out.append("|" if part == "||" else "&")
            continue
        lit = re.fullmatch(r"\"?([a-z]+)\"?\s+(==|!=)\s+\"([a-z]+)\"", part)
        if lit:  # two words (a config flag the runner's value was put in for): a constant
            same = lit.group(1) == lit.group(3)
            out.append("(1==1)" if same == (lit.group(2) == "==") else "(1==0)")
            continue
        t = re.fullmatch(r"\"?\$\{?([A-Z_]+)\}?\"?\s+(-[a-z]{2}|==|!=)\s+\"?(\d+)\"?", part)
        op = t and _TEST_OPS.get(t.group(2), t.group(2) if t.group(2) in ("==", "!=") else None)
        if not t or not op:
            return None
        name = t.group(1)
        if name not in RUNNER_VARS:
            if not values or name not in values:
                return None
            name = f"({values[name]})"  # the script's own value, as an expression
        out.append(f"({name}{op}{t.group(3)})")
    return "".join(out)


def branched_values(script: str) -> dict[str, str]:
    """Variables a script sets in `if`/`elif`/`else` branches on the runner's variables, each
    as one expression: `IF(cond,then,else)` nested in the order the script runs (so a later
    top-level assignment wins), `NONE` on a path that sets nothing. The scripts' usual forms:
    SGLang's `--scheduler-recv-interval` of 30 from 16 clients and 10 below
    (benchmarks/single_node/qwen3.5_fp8_b200.sh), settings per TP (dsr1_fp8_b200.sh). A
    variable set under any other condition is left out (unknown); so are accuracy-eval values
    (`EVAL_...`)."""
    values: dict[str, str] = {}
    unknown: set[str] = set()
    frames: list[list[str | None]] = []  # per open `if`: its branch conditions so far
    for line in script.splitlines():
        text = line.split("#", 1)[0].strip()
        if re.match(r"if\s", text):
            frames.append([_shell_test(text, values)])
        elif re.match(r"elif\s", text) and frames:
            frames[-1].append(_shell_test(text, values))
        elif text == "else" and frames:
            frames[-1].append("else")
        elif text == "fi" and frames:
            frames.pop()
        else:
            a = _assignment(text)
            if not a or "EVAL_" in a[1]:
                continue
            name, value = a
            path = []
            for branches in frames:
                *before, here = branches
                if here is None or None in before:
                    unknown.add(name)
                    break
                negs = [f"NOT({c})" for c in before]
                path.append("&".join(([] if here == "else" else [here]) + negs) or "(1==1)")
            else:
                # A number, a runner variable or arithmetic in them and in what the script set
                # before (a top-level reassignment reads the value it replaces).
                value = _shell_value(value, {}, values) or ""
                if not value or "NONE" in value:
                    unknown.add(name)
                    continue
                cond = "&".join(f"({p})" for p in path)
                if not cond:  # set whatever came before
                    unknown.discard(name)
                values[name] = f"IF({cond},{value},{values.get(name, 'NONE')})" if cond else value
    return {k: v for k, v in values.items() if k not in unknown}


def _shell_value(
    text: str, assigned: dict[str, set[str]], branched: dict[str, str] | None = None
) -> str | None:
    """A flag's value as a number or an expression in RUNNER_VARS: quotes dropped, a variable
    the script assigns one value resolved, one it sets per branch on the runner's variables
    replaced by its `branched` expression, `$((...))` read as bash arithmetic
    (`_arithmetic`); None if it depends on anything else."""

    def known(name: str) -> str | None:
        if name in RUNNER_VARS:
            return name
        values = assigned.get(name, set())
        if len(values) == 1:
            return next(iter(values))
        if branched and name in branched:
            return branched[name]
        return None

    text = text.strip().strip("'\"")
    for _ in range(6):  # a variable may name another
        m = re.fullmatch(r"\$\(\((.*)\)\)", text.strip())
        if m:
            text = _arithmetic(m.group(1), known) or ""
            if not text:
                return None
            continue
        names = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", text)
        if not names:
            break
        for name in names:
            value = known(name)
            if value is None:
                return None
            text = re.sub(r"\$\{?" + name + r"\}?(?![A-Za-z0-9_])", lambda _, v=value: v, text)
    text = re.sub(r"\s+", "", text.strip().strip("'\""))
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    if (
        not text
        or not words <= set(RUNNER_VARS) | {"IF", "NOT", "NONE"}
        or not re.fullmatch(r"[A-Z_0-9.+\-*/(),<>=!&|]+", text)
    ):
        return None
    return text


def _arithmetic(body: str, known: Callable[[str], str | None]) -> str | None:
    """A bash `$((...))` body as an expression in RUNNER_VARS: variables (`$X` or bare `X`)
    resolved by `known`, each in parentheses; `a ? b : c` as IF(a,b,c); `/` as integer
    division, as bash computes it (`//`). None when a name is unknown."""
    expr = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", r"\1", body)
    expr = re.sub(r"\s+", "", expr)
    m = re.fullmatch(r"([^?:]+)\?([^?:]+):([^?:]+)", expr)
    if m:  # (one top-level choice: the scripts' `CONC < 8 ? CONC : CONC / 8`)
        expr = f"IF({m.group(1)},{m.group(2)},{m.group(3)})"
    expr = re.sub(r"(?<!/)/(?!/)", "//", expr)
    reserved = {*RUNNER_VARS, "IF", "NOT", "NONE"}
    for _ in range(6):  # a variable may name another
        words = list(dict.fromkeys(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr)))
        words = [w for w in words if w not in reserved]
        if not words:
            return expr
        for word in words:
            value = known(word)
            if value is None:
                return None
            inner = re.fullmatch(r"\$\(\((.*)\)\)", value.strip())
            if inner:
                value = _arithmetic(inner.group(1), known) or ""
                if not value:
                    return None
            value = value.strip("${}") if re.fullmatch(r"\$\{?[A-Z_]+\}?", value) else value
            expr = re.sub(
                r"(?<![A-Za-z0-9_])" + word + r"(?![A-Za-z0-9_])", lambda _, v=value: f"({v})", expr
            )
    return None


def _one(
    script: str,
    patterns: tuple[str, ...],
    assigned: dict[str, set[str]],
    word: bool = False,
    branched: dict[str, str] | None = None,
) -> str:
    """The single value the patterns find in a script ('' if none, or several that differ);
    `word`: a literal word (a data type), not a number."""
    found = set()
    for pattern in patterns:
        for m in re.finditer(pattern, script, re.M):
            text = m.group(1).strip("'\"")
            if word:
                found.add(text if re.fullmatch(r"[A-Za-z0-9_]+", text) else None)
            else:
                found.add(_shell_value(text, assigned, branched))
    return found.pop() or "" if len(found) == 1 else ""


def launch_settings(script: str, dp_attn: bool | None = None) -> dict[str, str]:
    """What an InferenceX single-node launch script passes its engine (LAUNCH_FIELDS), read
    from vLLM's `--flag value` or config-file `flag: value`, SGLang's `--flag value` and
    TensorRT-LLM's `--flag value` or extra-options YAML. `dp_attn`: the config item's attention
    DP, which its runner exports as `DP_ATTENTION` (dsr1_fp8_b200_trt_mtp.sh takes a KV fraction
    of 0.7 under it, 0.8 without); None leaves settings that depend on it unknown.

    - kv_cache_dtype: `--kv-cache-dtype` (fp8_e4m3 is fp8), TensorRT-LLM's `kv_cache_config`
      `dtype`; '' when the script leaves the engine's default;
    - mem_fraction: vLLM `gpu-memory-utilization`, SGLang `--mem-fraction-static`,
      TensorRT-LLM `free_gpu_memory_fraction` (each engine's own meaning);
    - token_budget: vLLM `max-num-batched-tokens`, SGLang `--chunked-prefill-size`,
      TensorRT-LLM `max_num_tokens`;
    - max_seqs: vLLM `max-num-seqs`, SGLang `--max-running-requests`, TensorRT-LLM
      `--max_batch_size` or a top-level `max_batch_size:`;
    - graph_max_bs: SGLang `--cuda-graph-max-bs`, vLLM `max-cudagraph-capture-size`,
      TensorRT-LLM `cuda_graph_config`'s `max_batch_size`;
    - recv_interval: SGLang `--scheduler-recv-interval`;
    - stream_interval: TensorRT-LLM's `stream_interval` (its serving loop responds every N
      steps);
    - postprocess_workers: TensorRT-LLM's `num_postprocess_workers` (processes that take the
      responses' detokenising and formatting off its serving loop; the gpt-oss scripts set 4);
    - prefill_graphs: 1 where a TensorRT-LLM script turns on piecewise CUDA graphs for
      prefill iterations (captured up to its max_num_tokens), 0 or '' where not;
    - ssm_dtype: the recurrent (Mamba / Gated DeltaNet) state's format, SGLang
      `--mamba-ssm-dtype`, vLLM `--mamba-ssm-cache-dtype`; '' leaves the checkpoint's
      `mamba_ssm_dtype`;
    - ar_fusion: the all-reduce + RMSNorm fusion the script asks for (`allreduce_fusion_of`);
    - ar_fusion_mib: vLLM's fusion input limits it sets (`fusion_thresholds_of`);
    - mxfp4_activation: what MXFP4 experts quantise activations to, where the script chooses
      (`mxfp4_activation_of`);
    - moe_backend: the fused-MoE kernels a vLLM script asks for (`vllm_moe_backend_of`), ''
      for vLLM's own choice; TensorRT-LLM's `moe_config.backend` (`trtllm_moe_backend_of`);
    - prefix_cache: "off" or "on" where the script sets prefix caching (`prefix_cache_of`),
      '' for the engine's default (on in all three).
    """
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    script = "\n".join(lines)
    if dp_attn is not None:  # the config item's attention DP, as its runner exports it
        script = re.sub(r"\$\{?DP_ATTENTION\}?", "true" if dp_attn else "false", script)
    assigned: dict[str, set[str]] = {}
    for line in script.splitlines():
        a = _assignment(line.strip())
        if a and "EVAL_" not in a[1]:  # accuracy-eval runs only (`EVAL_ONLY` branches)
            assigned.setdefault(a[0], set()).add(a[1])
    branched = branched_values(script)
    val = r"[= ]+(\"[^\"]*\"|'[^']*'|\S+)"
    yaml_val = r":\s*(\S+)\s*$"
    out = {
        "kv_cache_dtype": _one(
            script,
            (
                r"--kv-cache-dtype" + val,
                r"^kv-cache-dtype" + yaml_val,
                r"^kv_cache_config:\s*\n(?:[ \t]+\S.*\n)*?[ \t]+dtype" + yaml_val,
            ),
            {},
            word=True,
        ),
        "mem_fraction": _one(
            script,
            (
                r"--gpu-memory-utilization" + val,
                r"^gpu-memory-utilization" + yaml_val,
                r"--mem-fraction-static" + val,
                r"free_gpu_memory_fraction" + yaml_val,
                r"--free_gpu_memory_fraction" + val,
            ),
            assigned,
            branched=branched,
        ),
        "token_budget": _one(
            script,
            (
                r"--max-num-batched-tokens" + val,
                r"^max-num-batched-tokens" + yaml_val,
                r"--chunked-prefill-size" + val,
                r"--max_num_tokens" + val,
                r"^max_num_tokens" + yaml_val,
            ),
            assigned,
            branched=branched,
        ),
        "max_seqs": _one(
            script,
            (
                r"--max-num-seqs" + val,
                r"^max-num-seqs" + yaml_val,
                r"--max-running-requests" + val,
                r"--max_batch_size" + val,
                r"^max_batch_size" + yaml_val,
            ),
            assigned,
            branched=branched,
        ),
        "graph_max_bs": _one(
            script,
            (
                r"--cuda-graph-max-bs" + val,
                r"--max-cudagraph-capture-size" + val,
                r"^max-cudagraph-capture-size" + yaml_val,
                r"^cuda_graph_config:\s*\n(?:[ \t]+\S.*\n)*?[ \t]+max_batch_size" + yaml_val,
            ),
            assigned,
            branched=branched,
        ),
        "recv_interval": _one(
            script, (r"--scheduler-recv-interval" + val,), assigned, branched=branched
        ),
        "stream_interval": _one(
            script, (r"^stream_interval" + yaml_val,), assigned, branched=branched
        ),
        "postprocess_workers": _one(
            script,
            (r"^num_postprocess_workers" + yaml_val, r"--num_postprocess_workers" + val),
            assigned,
            branched=branched,
        ),
        "ssm_dtype": _one(
            script,
            (
                r"--mamba-ssm-dtype" + val,
                r"--mamba-ssm-cache-dtype" + val,
                r"^mamba-ssm-cache-dtype" + yaml_val,
            ),
            {},
            word=True,
        ),
    }
    # TensorRT-LLM's piecewise CUDA graphs for iterations with prefill tokens
    # (`torch_compile_config: enable_piecewise_cuda_graph: true`, its capture sizes up to
    # max_num_tokens in every script that sets it): 1 where the script turns them on, as the
    # `PIECEWISE_CUDA_GRAPHS` switch that guards the block says per branch.
    graphs = ""
    if re.search(r"^\s*enable_piecewise_cuda_graph:\s*true", script, re.M):
        guard = "PIECEWISE_CUDA_GRAPHS"
        graphs = _shell_value("$" + guard, assigned, branched) or "" if guard in assigned else "1"
    out["prefill_graphs"] = graphs
    out["ar_fusion"] = allreduce_fusion_of(script)
    out["ar_fusion_mib"] = fusion_thresholds_of(script)
    out["mxfp4_activation"] = mxfp4_activation_of(script)
    out["moe_backend"] = vllm_moe_backend_of(script) or trtllm_moe_backend_of(script, assigned)
    out["prefix_cache"] = prefix_cache_of(script)
    dtype = out["kv_cache_dtype"].lower()
    out["kv_cache_dtype"] = "fp8" if dtype.startswith("fp8") else dtype
    return out


def allreduce_fusion_of(script: str) -> str:
    """The all-reduce + residual + RMSNorm fusion a launch script asks for: "flashinfer" for
    SGLang's `--enable-flashinfer-allreduce-fusion`; "vllm" where a vLLM compilation config
    turns the pass on (`fuse_allreduce_rms` or, before vLLM 0.12, `enable_fi_allreduce_fusion`
    true, e.g. gptoss_fp4_b200.sh, kimik2.5_int4_b200.sh), "none" where it turns it off; ''
    for the engine's default."""
    if re.search(r"--enable-flashinfer-allreduce-fusion\b", script):
        return "flashinfer"
    switch = r"(?:fuse_allreduce_rms|enable_fi_allreduce_fusion)[\"']?\s*[:= ]\s*[\"']?"
    if re.search(switch + r"true\b", script, re.I):
        return "vllm"
    if re.search(switch + r"false\b", script, re.I):
        return "none"
    return ""


def prefix_cache_of(script: str) -> str:
    """Whether a launch script turns prefix caching off or on: "off" for SGLang's
    `--disable-radix-cache`, vLLM's `--no-enable-prefix-caching` (or `enable-prefix-caching:
    false` in a config file) and TensorRT-LLM's `kv_cache_config` `enable_block_reuse: false`;
    "on" for an explicit `--enable-prefix-caching` or `enable_block_reuse: true`; '' where it
    leaves the engine's default. (SGLang keeps the overlap schedule of a hybrid model only
    with its radix cache off: `EngineProfile.overlap_rule`.)"""
    off = (
        r"--disable-radix-cache\b",
        r"--no-enable-prefix-caching\b",
        r"^\s*enable-prefix-caching:\s*false\b",
        r"enable_block_reuse:\s*false\b",
    )
    on = (
        r"--enable-prefix-caching\b",
        r"^\s*enable-prefix-caching:\s*true\b",
        r"enable_block_reuse:\s*true\b",
    )
    if any(re.search(p, script, re.M | re.I) for p in off):
        return "off"
    if any(re.search(p, script, re.M | re.I) for p in on):
        return "on"
    return ""


def fusion_thresholds_of(script: str) -> str:
    """vLLM's fusion input limits a script sets, `VLLM_FLASHINFER_ALLREDUCE_FUSION_THRESHOLDS_MB
    ='{"2":32,"4":32,"8":8}'` (TP degree: MiB), as "2:32 4:32 8:8"; '' when it sets none."""
    m = re.search(r"VLLM_FLASHINFER_ALLREDUCE_FUSION_THRESHOLDS_MB=[\"']?(\{[^}]*\})", script)
    if not m:
        return ""
    pairs = re.findall(r"[\"']?(\d+)[\"']?\s*:\s*([\d.]+)", m.group(1))
    return " ".join(f"{tp}:{mib}" for tp, mib in pairs)


# A vLLM launch's switches that run MXFP4 experts on Marlin (`get_mxfp4_backend`).
_MXFP4_MARLIN = (
    r"VLLM_MXFP4_USE_MARLIN=[\"']?1\b"
    r"|VLLM_MXFP4_BACKEND=[\"']?(?:marlin|MARLIN)\b"
    r"|--mxfp4-backend[= ]+[\"']?(?:marlin|MARLIN)\b"
)


def vllm_moe_backend_of(script: str) -> str:
    """The fused-MoE kernels a vLLM launch script asks for: "flashinfer_trtllm" where it sets
    `VLLM_USE_FLASHINFER_MOE_INT4=1` (FlashInfer's TRT-LLM MxInt4 MoE instead of Marlin, e.g.
    kimik2.5_int4_b200.sh); "marlin" where it runs MXFP4 experts on Marlin
    (`VLLM_MXFP4_USE_MARLIN=1`, `VLLM_MXFP4_BACKEND=marlin` or `--mxfp4-backend marlin`:
    vllm/model_executor/layers/quantization/mxfp4.py `get_mxfp4_backend`, where Hopper
    otherwise runs OpenAI's Triton kernels; gptoss_fp4_h100.sh, gptoss_fp4_h200.sh);
    "triton" where it passes `--moe-backend triton` or turns both
    FlashInfer's and DeepGEMM's fp8 MoE off (`VLLM_USE_FLASHINFER_MOE_FP8=0` with
    `VLLM_MOE_USE_DEEP_GEMM=0` or `VLLM_USE_DEEP_GEMM=0`, minimaxm2.5_fp8_b200.sh before
    2026-04-03), which leaves the oracle Triton; '' for vLLM's own choice."""
    if re.search(r"VLLM_USE_FLASHINFER_MOE_INT4=[\"']?1\b", script):
        return "flashinfer_trtllm"
    if re.search(_MXFP4_MARLIN, script):
        return "marlin"
    if re.search(r"--moe-backend[= ]+[\"']?triton\b", script):
        return "triton"
    no_fi = re.search(r"VLLM_USE_FLASHINFER_MOE_FP8=[\"']?0\b", script)
    no_dg = re.search(r"VLLM_(?:MOE_)?USE_DEEP_GEMM=[\"']?0\b", script)
    return "triton" if no_fi and no_dg else ""


def trtllm_moe_backend_of(script: str, assigned: dict[str, set[str]]) -> str:
    """TensorRT-LLM's fused-MoE backend a launch script writes into its extra-options YAML
    (`moe_config:` `backend:`), lower-cased: a literal, or a variable the script sets per
    branch where that resolves to one name for the item (the attention-DP switch is
    substituted before: dsr1_fp8_b200_trt_mtp.sh asks for DEEPGEMM under attention DP and
    TRTLLM without); '' where it depends on the clients or lengths, or is not set."""
    m = re.search(r"^moe_config:\s*\n(?:[ \t]+\S.*\n)*?[ \t]+backend:\s*(\S+)\s*$", script, re.M)
    if not m:
        return ""
    value = m.group(1).strip("'\"")
    var = re.fullmatch(r"\$\{?([A-Z_]+)\}?", value)
    if not var:
        return value.lower() if re.fullmatch(r"[A-Za-z_]+", value) else ""
    name = var.group(1)
    choices = sorted(assigned.get(name, set()))
    if not choices or not all(re.fullmatch(r"[A-Za-z_]+", c) for c in choices):
        return ""
    code = {c: str(i + 1) for i, c in enumerate(choices)}  # the names as numbers, per branch
    coded = re.sub(
        r"^(\s*" + name + r"=)[\"']?([A-Za-z_]+)[\"']?\s*$",
        lambda a: a.group(1) + code.get(a.group(2), "0"),
        script,
        flags=re.M,
    )
    expr = branched_values(coded).get(name, "")
    if not expr or set(re.findall(r"[A-Za-z_]+", expr)) - {"IF", "NOT"}:
        return ""  # (it depends on the runner's variables)
    functions = {"IF": lambda c, a, b: a if c else b, "NOT": lambda c: not c}
    chosen = int(eval(expr, {"__builtins__": {}}, functions))  # only numbers, IF and NOT
    names = {int(v): k for k, v in code.items()}
    return names.get(chosen, "").lower()


# How a launch chooses the activation format of MXFP4 experts (gpt-oss), and which it is:
# vLLM's environment switches and `--mxfp4-backend` (vllm/model_executor/layers/quantization/
# mxfp4.py `get_mxfp4_backend`), SGLang's `--flashinfer-mxfp4-moe-precision`, TensorRT-LLM's
# `OVERRIDE_QUANT_ALGO` (`ModelConfig.override_quant_algo`).
_MXFP4_SWITCHES = (
    (r"VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8(?:_CUTLASS)?=[\"']?1\b", "mxfp8"),
    (r"VLLM_USE_FLASHINFER_MOE_MXFP4_BF16=[\"']?1\b", "bf16"),
    (r"VLLM_MXFP4_USE_MARLIN=[\"']?1\b", "bf16"),
    (r"--mxfp4-backend[= ]+[\"']?(?:trtllm-mxfp8|TRTLLM_MXFP8|cutlass|CUTLASS)\b", "mxfp8"),
    (r"--mxfp4-backend[= ]+[\"']?(?:marlin|MARLIN|triton|TRITON|trtllm|TRTLLM)(?![-\w])", "bf16"),
    (r"--flashinfer-mxfp4-moe-precision[= ]+[\"']?bf16\b", "bf16"),
    (r"OVERRIDE_QUANT_ALGO=[\"']?W4A16_MXFP4\b", "bf16"),
    (r"OVERRIDE_QUANT_ALGO=[\"']?W4A8_MXFP4_MXFP8\b", "mxfp8"),
)


def mxfp4_activation_of(script: str) -> str:
    """ "mxfp8" or "bf16" where a launch script chooses what its MXFP4 experts quantise
    activations to (one answer across the script), '' where it leaves the engine's choice."""
    found = {fmt for pattern, fmt in _MXFP4_SWITCHES if re.search(pattern, script)}
    return found.pop() if len(found) == 1 else ""


def single_node(inferencex: str, day: str, models: tuple[str, ...]) -> list[dict[str, object]]:
    """The colocated search-space items of the NVIDIA master config in effect on `day`."""
    for path in CONFIG_PATHS:
        commit, _ = commit_at(inferencex, day, path)
        if commit:
            break
    else:
        return []
    # The launch scripts change on their own (Qwen3.5's BF16 B200 script gained its recipe
    # flags on 2026-02-20 under an unchanged config), so they are read as the repository stood
    # at the end of `day`, not at the config's last commit.
    head, _ = commit_at(inferencex, day)
    rows: list[dict[str, object]] = []
    for key, entry in master_config(inferencex, commit, path).items():
        if not isinstance(entry, dict) or entry.get("disagg") or entry.get("multinode"):
            continue
        if entry.get("model-prefix") not in models:
            continue
        gpu = key.split("-")[2] if key.count("-") >= 3 else ""
        fw = "_trt" if entry.get("framework") == "trt" else ""
        for seq in entry.get("seq-len-configs") or []:
            for item in seq.get("search-space") or []:
                spec = item.get("spec-decoding", "none") or "none"
                # The runner's script name: <prefix>_<precision>_<gpu>[_trt][_mtp] (H100
                # runners drop both suffixes).
                mtp = "_mtp" if spec == "mtp" else ""
                base = f"{entry.get('model-prefix')}_{entry.get('precision')}_{gpu}"
                script, where = "", ""
                for name in (base + fw + mtp, *((base,) if gpu == "h100" else ())):
                    for pattern in SCRIPT_PATHS:
                        where = pattern.format(name)
                        script = git(inferencex, "show", f"{head}:{where}")
                        if script:
                            break
                    if script:
                        break
                dp = bool(item.get("dp-attn", False))
                k = draft_tokens(script, dp) if spec == "mtp" and script else ""
                launch = launch_settings(script, dp) if script else dict.fromkeys(LAUNCH_FIELDS, "")
                rows.append(
                    {
                        "config_key": key,
                        "model_prefix": entry.get("model-prefix", ""),
                        "gpu": gpu,
                        "framework": entry.get("framework", ""),
                        "precision": entry.get("precision", ""),
                        "image": entry.get("image", ""),
                        "isl": seq.get("isl", ""),
                        "osl": seq.get("osl", ""),
                        "tp": item.get("tp", ""),
                        "ep": item.get("ep", 1),
                        "dp_attn": dp,
                        "spec_decoding": spec,
                        "num_draft_tokens": k,
                        "script": where if script else "",
                        **launch,
                        "concurrencies": " ".join(str(c) for c in concurrencies(item)),
                        "source_file": path,
                        "days_in_effect": day,
                        "source_commits": commit[:12],
                        "script_commits": (
                            commit_at(inferencex, day, where)[0][:12] if script else "-"
                        ),
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("inferencex", help="git dir of SemiAnalysisAI/InferenceX")
    ap.add_argument("--dates", nargs="*", help="days (YYYY-MM-DD); default: every day")
    ap.add_argument("--models", nargs="*", default=list(MODELS), help="model-prefixes")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    days = sorted(args.dates) if args.dates else every_day()
    per_day = (single_node(args.inferencex, day, tuple(args.models)) for day in days)
    write_merged(per_day, FIELDS, WHEN, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

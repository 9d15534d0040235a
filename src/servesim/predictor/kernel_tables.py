"""Measured kernel tables: NVIDIA's aiconfigurator-core package (Apache-2.0), read in place.

The package ships latencies measured per GPU, operator family, serving engine and engine version,
one Parquet file per table: `systems/data/<gpu>/<family>/<engine>/<version>/<table>.parquet`
(families: gemm, attention, mla, mla_bmm, moe, comm (nccl), custom_allreduce, ...). servesim
never copies them: this module finds them, picks the table for an engine and version (the
nearest version when the exact one was not measured) and reads columns as numpy arrays.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np

from servesim.errors import ServesimError
from servesim.spec.release import version_key

ENGINES = ("vllm", "sglang", "trtllm")


def engine_order(engine: str) -> tuple[str, ...]:
    """The engines whose tables may price `engine`'s kernels: its own first, then the others
    (an unknown name, e.g. a CPU runtime, has no own tables)."""
    own = (engine,) if engine in ENGINES else ()
    return own + tuple(e for e in ENGINES if e != engine)


@functools.cache
def data_root() -> Path:
    """The installed package's data folder (one sub-folder per GPU)."""
    try:
        root = resources.files("aiconfigurator_core") / "systems" / "data"
    except ModuleNotFoundError:
        raise ServesimError(
            "Measured kernel tables need the aiconfigurator-core package; install servesim's "
            "locked dependencies (pip install -c constraints.txt -e .) or use "
            "--latency-model roofline."
        ) from None
    return Path(str(root))


def gpus() -> list[str]:
    """GPUs with measured tables (aiconfigurator's names, which servesim's catalog shares)."""
    return sorted(p.name for p in data_root().iterdir() if p.is_dir())


def check_leave_out(fitted: list[str], only: list[str] | None) -> None:
    """Refuse, in one sentence, a leave-one-GPU-out run over the GPUs `fitted` (those with
    tables) that leaves out `only` (None: each in turn), when it cannot run."""
    if len(fitted) < 2:
        raise ServesimError(
            f"leaving one GPU out needs two or more GPUs with tables, got {len(fitted)} "
            f"({', '.join(fitted) or 'none'}); name more with --gpus, or pick the GPU to leave "
            "out with --only."
        )
    unknown = sorted(set(only or ()) - set(fitted))
    if unknown:
        raise ServesimError(
            f"--only names GPUs without tables in the set ({', '.join(unknown)}); pick from "
            f"{', '.join(fitted)}."
        )


def versions(gpu: str, family: str, engine: str) -> list[str]:
    """Engine versions measured for a GPU and operator family (empty if none)."""
    where = data_root() / gpu / family / engine
    return sorted(p.name for p in where.iterdir() if p.is_dir()) if where.is_dir() else []


def collections(gpu: str) -> dict[str, dict[str, list[str]]]:
    """The measured collections of a GPU: engine -> release -> the operator families it
    measured (tables present), releases oldest first; what `--engine-version` can pick."""
    out: dict[str, dict[str, list[str]]] = {}
    root = data_root() / gpu
    families = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for family in families:
        for engine in ENGINES:
            for v in versions(gpu, family, engine):
                if any((root / family / engine / v).glob("*.parquet")):
                    out.setdefault(engine, {}).setdefault(v, []).append(family)
    return {
        e: dict(sorted(found.items(), key=lambda kv: version_key(kv[0])))
        for e, found in sorted(out.items())
    }


def nearest_version(available: list[str], wanted: str | None) -> str:
    """The exact version when measured; else the nearest by (major, minor, patch, release
    candidate), the newer on a tie; with no version wanted, the newest."""
    if not available:
        raise ValueError("no versions to choose from")
    if wanted in available:
        return wanted
    if wanted is None:
        return max(available, key=version_key)
    w = version_key(wanted)

    def distance(v: str) -> tuple[int, ...]:
        return tuple(abs(a - b) for a, b in zip(version_key(v), w, strict=False))

    return min(available, key=lambda v: (distance(v), tuple(-x for x in version_key(v))))


def find(
    gpu: str, family: str, table: str, engine: str, version: str | None = None
) -> tuple[Path, str] | None:
    """The Parquet file of `table` (e.g. "gemm_perf") for a GPU, family and engine, with the
    version chosen; None when that engine has no such table on that GPU."""
    found = find_all(gpu, family, table, engine, version)
    return found[0] if found else None


def find_all(
    gpu: str, family: str, table: str, engine: str, version: str | None = None
) -> list[tuple[Path, str]]:
    """Every version's Parquet file of `table` for a GPU, family and engine, nearest to
    `version` first (`nearest_version`; a later collection may have measured other layouts
    than the nearest one did)."""
    where = data_root() / gpu / family / engine
    left = [v for v in versions(gpu, family, engine) if (where / v / f"{table}.parquet").exists()]
    out = []
    while left:
        v = nearest_version(left, version)
        left.remove(v)
        out.append((where / v / f"{table}.parquet", v))
    return out


# Columns some versions of a table lack, and what their absence means: attention tables
# collected before sliding windows were measured have no `window_size` (all full attention).
OPTIONAL_COLUMNS: dict[str, int] = {"window_size": 0}


@functools.lru_cache(maxsize=64)
def read(path: Path, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Columns of one table as numpy arrays (text columns as object arrays), cached; a column
    the table's version lacks takes its `OPTIONAL_COLUMNS` value on every row."""
    import pyarrow.parquet as pq

    present = set(pq.read_schema(str(path)).names)
    missing = [c for c in columns if c not in present]
    unknown = [c for c in missing if c not in OPTIONAL_COLUMNS]
    if unknown:
        raise ServesimError(
            f"Kernel table {path} has no column {unknown[0]!r}; reinstall the pinned "
            "aiconfigurator-core (constraints.txt) or pass --latency-model roofline."
        )
    t = pq.read_table(str(path), columns=[c for c in columns if c in present])
    out = {c: t.column(c).to_numpy(zero_copy_only=False) for c in columns if c in present}
    for c in missing:
        out[c] = np.full(t.num_rows, OPTIONAL_COLUMNS[c])
    return out


# GEMM dtypes whose rows in an engine's own GEMM table do not time the kernel the engine serves
# with; another engine's table on the same GPU prices them (`gemm_table`):
# - vLLM fp8_block: aiconfigurator's collector times it eagerly, one op a loop, without CUDA
#   graphs (collector/vllm/collect_gemm.py, `use_cuda_graph=gemm_type != "fp8_block"`), so its
#   rows hold the host's dispatch of the block-fp8 op: none is under 55 µs on H100/H200, 151 µs
#   on B200, 236 µs on GB200/GB300 (the same B200 die on a Grace host), 282 µs on L40S, where
#   every graphed table (vLLM's other dtypes, SGLang's and TensorRT-LLM's fp8_block) starts at
#   2-12 µs. Where vLLM's rows are kernel-bound (3x that floor) they agree with SGLang's
#   fp8_block rows (median ratio 1.08 on H100, 1.09 on B200) and with vLLM's graphed per-tensor
#   fp8 rows (1.05, 0.99), and a served engine replays its decode in CUDA graphs.
# - TensorRT-LLM nvfp4: its collector (collector/trtllm/collect_gemm.py) never enters
#   `autotune()`, so `trtllm::nvfp4_gemm` ran its untuned fallback tactic; the engine tunes
#   every tunable op at warm-up.
UNTIMED_GEMM_DTYPES: dict[str, frozenset[str]] = {
    "vllm": frozenset({"fp8_block"}),
    "trtllm": frozenset({"nvfp4"}),
}


# GEMM dtypes an engine autotunes at warm-up (TensorRT-LLM's `AutoTuner` picks the fastest of
# its tactics for `trtllm::nvfp4_gemm`: CUTLASS, cuBLASLt, TRT-LLM-gen kernels): the op runs at
# least as fast as the fastest kernel another engine measured for it, so it is priced by the
# lower envelope of their tables (`gemm_tables`).
AUTOTUNED_GEMM_DTYPES: dict[str, frozenset[str]] = {"trtllm": frozenset({"nvfp4"})}


@functools.lru_cache(maxsize=256)
def gemm_dtypes_of(path: Path) -> frozenset[str]:
    """The GEMM dtypes one `gemm_perf` table holds."""
    return frozenset(str(x) for x in read(path, ("gemm_dtype",))["gemm_dtype"])


def gemm_table(
    gpu: str, gemm_dtype: str, engines: tuple[str, ...], version: str | None = None
) -> Path | None:
    """The `gemm_perf` table that prices `gemm_dtype` on `gpu`: the first of `engines` (the
    serving engine first) whose table holds the dtype as that engine serves it
    (`UNTIMED_GEMM_DTYPES`), in the collection nearest `version` that measured the dtype (an
    older collection may not have); a cuBLAS or CUTLASS GEMM is the same kernel whichever
    engine calls it. None when no engine's table does."""
    for engine in engines:
        if gemm_dtype in UNTIMED_GEMM_DTYPES.get(engine, ()):
            continue
        for path, _ in find_all(gpu, "gemm", "gemm_perf", engine, version):
            if gemm_dtype in gemm_dtypes_of(path):
                return path
    return None


@functools.lru_cache(maxsize=256)
def gemm_tables(
    gpu: str, gemm_dtype: str, engines: tuple[str, ...], version: str | None = None
) -> tuple[Path, ...]:
    """The `gemm_perf` tables whose lower envelope prices `gemm_dtype` on `gpu` for the
    serving engine `engines[0]`: every other engine's table that holds the dtype where the
    serving engine autotunes it (`AUTOTUNED_GEMM_DTYPES`), else the one `gemm_table` picks."""
    if engines and gemm_dtype in AUTOTUNED_GEMM_DTYPES.get(engines[0], ()):
        found = [gemm_table(gpu, gemm_dtype, (e,), version) for e in engines[1:]]
        paths = tuple(p for p in found if p is not None)
        if paths:
            return paths
    one = gemm_table(gpu, gemm_dtype, engines, version)
    return (one,) if one is not None else ()

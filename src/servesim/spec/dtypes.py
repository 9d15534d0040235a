"""Numeric formats servesim knows, with their storage size in bytes per element.

Weights may be `bf16`, `fp16`, `fp8`, `int8` or 4-bit (`int4`, `fp4`, `mxfp4`); the KV cache
`bf16`, `fp16` or `fp8`. 4-bit weight-only formats compute in bf16 (W4A16); fp8 and int8 compute
in their own tensor-core rate (W8A8); NVFP4 (`fp4`) computes at the FP4 tensor-core rate on a
device that has one (W4A4, Blackwell) and weight-only in bf16 elsewhere (`gemm_compute_dtype`).
"""

from collections.abc import Collection

from servesim.errors import ServesimError

BYTES_PER_ELEMENT: dict[str, float] = {
    "fp32": 4.0,
    "tf32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    "fp4": 0.5,
    "mxfp4": 0.5 + 1 / 32,  # 4-bit values plus one 8-bit scale per 32 elements
}

# Bytes a weight element takes in a checkpoint, its block scales included (what memory
# holds): NVFP4 stores one FP8 (E4M3) scale per 16 values besides a per-tensor FP32 one, 4.5
# bits a value; MXFP4's E8M0 scale per 32 is in BYTES_PER_ELEMENT already. The kernel
# rooflines keep BYTES_PER_ELEMENT, the basis their efficiencies were fitted on.
STORAGE_BYTES: dict[str, float] = {**BYTES_PER_ELEMENT, "fp4": 0.5 + 1 / 16}

ALIASES: dict[str, str] = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float32": "fp32",
    "float8": "fp8",
    "fp8_e4m3": "fp8",
    "float8_e4m3fn": "fp8",
    "e4m3": "fp8",
    "w4a16": "int4",
    "awq": "int4",
    "gptq": "int4",
    "nvfp4": "fp4",
}

WEIGHT_DTYPES = ("bf16", "fp16", "fp8", "int8", "int4", "fp4", "mxfp4")
KV_DTYPES = ("bf16", "fp16", "fp8")


def canonical(name: str) -> str:
    """Map a user or config spelling (`bfloat16`, `float8_e4m3fn`) to servesim's name (`bf16`)."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in BYTES_PER_ELEMENT:
        known = ", ".join(BYTES_PER_ELEMENT)
        raise ServesimError(f"Unknown dtype {name!r}; use one of: {known}.")
    return key


def kernel_format(weight_dtype: str, block: bool = False) -> str:
    """The kernel class of a weight format: fp8 scaled per 128 × 128 block (`block`) runs
    block-scaled kernels of its own, `fp8_block` in the measured tables; others are as named."""
    wdt = canonical(weight_dtype)
    return "fp8_block" if block and wdt == "fp8" else wdt


def nbytes(name: str) -> float:
    """Bytes per element of a dtype name (any accepted spelling)."""
    return BYTES_PER_ELEMENT[canonical(name)]


def storage_nbytes(name: str) -> float:
    """Bytes a weight element of this format takes in memory, block scales included."""
    return STORAGE_BYTES[canonical(name)]


def compute_dtype(weight_dtype: str) -> str:
    """The tensor-core format a GEMM with these weights runs in: 4-bit weights compute in bf16."""
    w = canonical(weight_dtype)
    if w in ("int4", "fp4", "mxfp4"):
        return "bf16"
    if w == "fp32":
        return "fp32"
    return w


def gemm_compute_dtype(weight_dtype: str, native: Collection[str]) -> str:
    """The format a GEMM with these weights runs in on a device whose native tensor-core formats
    are `native` (its peak-rate keys): NVFP4 weights run W4A4 at the FP4 rate where the device
    has one, W4A16 in bf16 where it has none; other formats as `compute_dtype`."""
    w = canonical(weight_dtype)
    if w == "fp4":
        return "fp4" if "fp4" in native else "bf16"
    return compute_dtype(w)

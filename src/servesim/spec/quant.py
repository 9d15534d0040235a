"""Weight formats of local runtimes (llama.cpp GGUF types and their mixes) as bytes per tensor.

A GGUF "quantisation" is a recipe: most matrices in one block format, some in a wider one. The
recipes here follow llama.cpp's `llama_tensor_get_type_impl` (src/llama-quant.cpp, vendored in
llama-cpp-python 0.3.36): Q4_K_M keeps the output head in Q6_K and `attn_v` and `ffn_down` in
Q6_K on the "use more bits" layers (first and last eighth, every third between). Block sizes
from ggml's type traits (ggml/src/ggml.c): Q8_0 34 bytes per 32 weights, Q4_K 144 per 256,
Q5_K 176 per 256, Q6_K 210 per 256. Datacenter formats (bf16, fp8, int4) are uniform recipes.
"""

from __future__ import annotations

from dataclasses import dataclass

from servesim.errors import ServesimError
from servesim.spec.dtypes import nbytes

# Bytes per weight of each block format (ggml type traits: block bytes / block size).
BLOCK_BYTES_PER_WEIGHT: dict[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q6_k": 210 / 256,
    "q5_k": 176 / 256,
    "q4_k": 144 / 256,
    "q4_0": 18 / 32,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5 + 2 / 128,  # AWQ/GPTQ group 128: 4-bit values plus a 16-bit scale per group
}

# What a CPU's matrix kernels compute a format in (ggml-cpu): F16 weights are widened to fp32
# by F16C and multiplied with fp32 FMAs (no AVX512-FP16 path for mul_mat); BF16 uses
# AVX512_BF16 dot products; the quantised types quantise activations to 8 bits and use int8
# dot products (VNNI / maddubs). GPUs run their tensor-core format (`gpu_compute`).
CPU_COMPUTE: dict[str, str] = {
    "f32": "fp32",
    "f16": "fp32",
    "bf16": "bf16",
    "q8_0": "int8",
    "q6_k": "int8",
    "q5_k": "int8",
    "q4_k": "int8",
    "q4_0": "int8",
    "fp8": "fp32",
    "int8": "int8",
    "int4": "int8",
}
GPU_COMPUTE: dict[str, str] = {
    "f32": "fp32",
    "f16": "fp16",
    "bf16": "bf16",
    "q8_0": "int8",  # llama.cpp CUDA MMQ: int8 tensor cores on quantised weights
    "q6_k": "int8",
    "q5_k": "int8",
    "q4_k": "int8",
    "q4_0": "int8",
    "fp8": "fp8",
    "int8": "int8",
    "int4": "bf16",  # W4A16
}


@dataclass(frozen=True)
class Quant:
    """A weight recipe: the base format, the output head's, and the wider format some
    `attn_v`/`ffn_down` tensors get on the use-more-bits layers ("" when none)."""

    name: str
    base: str
    output: str
    more_bits: str = ""
    embedding: str = ""  # token embedding format ("" = as base)

    def layer_bytes_per_weight(self, part: str, layer: int, num_layers: int) -> float:
        """Bytes per weight of one matrix (`part`: q, k, v, o, gate, up, down) of one layer."""
        fmt = self.base
        if self.more_bits and part in ("v", "down") and use_more_bits(layer, num_layers):
            fmt = self.more_bits
        return BLOCK_BYTES_PER_WEIGHT[fmt]


def use_more_bits(layer: int, num_layers: int) -> bool:
    """llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third
    layer between get the wider format."""
    eighth = num_layers // 8
    return layer < eighth or layer >= 7 * num_layers // 8 or (layer - eighth) % 3 == 2


QUANTS: dict[str, Quant] = {
    "f16": Quant("f16", "f16", "f16"),
    "bf16": Quant("bf16", "bf16", "bf16"),
    "q8_0": Quant("q8_0", "q8_0", "q8_0"),
    "q4_k_m": Quant("q4_k_m", "q4_k", "q6_k", more_bits="q6_k", embedding="q4_k"),
    "q4_0": Quant("q4_0", "q4_0", "q6_k", embedding="q4_0"),
    "fp8": Quant("fp8", "fp8", "bf16", embedding="bf16"),
    "int8": Quant("int8", "int8", "bf16", embedding="bf16"),
    "int4": Quant("int4", "int4", "bf16", embedding="bf16"),
}


def get_quant(name: str) -> Quant:
    """Look up a weight recipe by name (case-insensitive, `Q4_K_M` or `q4_k_m`)."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in QUANTS:
        raise ServesimError(f"Unknown quantisation {name!r}; use one of: {', '.join(QUANTS)}.")
    return QUANTS[key]


def compute_dtype(quant: Quant, kind: str) -> str:
    """The peak-rate key a device of `kind` (cpu, gpu, edge) multiplies this recipe's weights in."""
    table = CPU_COMPUTE if kind == "cpu" else GPU_COMPUTE
    return table[quant.base]


# KV-cache bytes per value: llama.cpp keeps F16 caches whatever the weights' format (`-ctk f16`).
KV_BYTES_PER_VALUE = nbytes("fp16")

"""Time a model's operators on the local device with PyTorch and write calibration tables.

`profile_model` measures, for one model's shapes, the GEMMs of every projection over token
counts, prefill attention (causal, with and without cached context) and decode attention over
batch and context, the layer's memory-bound ops (Vidur's `mlp.csv` layout), attention over a
packed batch with a mask (how Hugging Face continuous batching runs it), and full forward passes.
Each shape runs `warmup` times untimed, then `repeats` times; the tables hold the median in
milliseconds (the aiconfigurator convention `servesim calibrate` reads) and the spread (p10,
p90). It also measures the device's best GEMM rate and the bandwidth of a stream over a buffer
the size of the model's weights (at most 2 GB, past every cache), and writes a device YAML for
the catalog (`device.yaml`).
CPU here, CUDA wherever torch sees a GPU. torch is imported only when profiling.
"""

from __future__ import annotations

import csv
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor.calibrate import VIDUR_OPS
from servesim.spec.model import ModelSpec

INSTALL_HINT = "install it with pip install 'servesim[measure]'"
MS = 1e3
SPREAD = ("latency_p10", "latency_p90", "repeats")


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ServesimError(f"servesim profile needs PyTorch; {INSTALL_HINT}.") from None
    return torch


@dataclass(frozen=True)
class ProfileConfig:
    """What to measure and how often."""

    token_counts: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    contexts: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    prefill_lengths: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024)
    packed_queries: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    packed_keys: tuple[int, ...] = (64, 256, 1024, 2048, 4096, 8192)
    warmup: int = 3
    repeats: int = 10
    threads: int = 1
    device: str = "auto"  # auto | cpu | cuda
    max_seconds_per_shape: float = 2.0  # fewer repeats for slow shapes (at least 3)

    def quick(self) -> ProfileConfig:
        """A small grid for tests and smoke runs."""
        return ProfileConfig(
            token_counts=(1, 4, 16, 64),
            batch_sizes=(1, 4),
            contexts=(64, 256),
            prefill_lengths=(16, 64),
            packed_queries=(1, 8, 32),
            packed_keys=(64, 512),
            warmup=1,
            repeats=3,
            threads=self.threads,
            device=self.device,
            max_seconds_per_shape=0.5,
        )


@dataclass(frozen=True)
class Timing:
    """Seconds per call over the timed repeats."""

    median_s: float
    p10_s: float
    p90_s: float
    repeats: int


class Timer:
    """Times a callable on one torch device: warm-ups, then repeats, synchronising on CUDA."""

    def __init__(self, cfg: ProfileConfig, device: str) -> None:
        self.cfg = cfg
        torch = _torch()
        self.sync: Callable[[], None] = (
            torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        )

    def __call__(self, fn: Callable[[], Any]) -> Timing:
        """Time `fn` (median and spread over repeats, fewer repeats when a call is slow)."""
        for _ in range(self.cfg.warmup):
            fn()
        self.sync()
        times: list[float] = []
        budget = self.cfg.max_seconds_per_shape
        start = time.perf_counter()
        for i in range(self.cfg.repeats):
            t = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t)
            if i >= 2 and time.perf_counter() - start > budget:
                break
        a = np.asarray(times)
        p10, p50, p90 = np.percentile(a, [10, 50, 90])
        return Timing(float(p50), float(p10), float(p90), len(a))


def _pick_device(name: str) -> str:
    torch = _torch()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ServesimError("--device cuda was asked for but torch sees no GPU; use --device cpu.")
    if name != "cpu" and not name.startswith("cuda"):
        raise ServesimError(f"Unknown profile device {name!r}; use auto, cpu or cuda.")
    return name


def device_label(device: str) -> str:
    """A readable name of the device measured (GPU name or CPU model)."""
    torch = _torch()
    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name())
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def gemm_shapes(model: ModelSpec) -> list[tuple[str, int, int]]:
    """(name, n, k) of each distinct projection of one layer plus the LM head (TP = 1)."""
    m = model
    q = m.num_heads * m.head_dim
    kv = m.num_kv_heads * m.head_dim
    up = (2 if m.gated_mlp else 1) * m.intermediate_size
    shapes = [
        ("qkv_proj", q + 2 * kv, m.hidden_size),
        ("o_proj", m.hidden_size, q),
        ("mlp_up_proj", up, m.hidden_size),
        ("mlp_down_proj", m.hidden_size, m.intermediate_size),
        ("lm_head", m.vocab_size, m.hidden_size),
        # How Hugging Face Llama runs them: q, k, v and gate, up as separate GEMMs.
        ("q_proj", q, m.hidden_size),
        ("kv_proj", kv, m.hidden_size),
        ("gate_proj", m.intermediate_size, m.hidden_size),
    ]
    seen: set[tuple[int, int]] = set()
    out = []
    for name, n, k in shapes:
        if (n, k) not in seen:
            seen.add((n, k))
            out.append((name, n, k))
    return out


class _Writer:
    """Rows of one aiconfigurator-style CSV table."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)
        self.rows: list[list[Any]] = []

    def add(self, **values: Any) -> None:
        self.rows.append([values[c] for c in self.columns])

    def save(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(self.columns)
            for r in self.rows:
                w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in r])
        return self.path


COMMON = ("framework", "version", "device", "op_name", "kernel_source")
ATTN = (
    "batch_size",
    "isl",
    "num_heads",
    "num_key_value_heads",
    "head_dim",
    "beam_width",
    "attn_dtype",
    "kv_cache_dtype",
    "step",
    "window_size",
    "latency",
    *SPREAD,
)


@dataclass
class ProfileResult:
    """Where the tables went and the device numbers measured."""

    out_dir: Path
    files: list[Path]
    device_name: str
    peak_flops_per_s: float
    mem_bw_bytes_per_s: float
    wall_s: float


def _ms(t: Timing) -> dict[str, float]:
    return {
        "latency": t.median_s * MS,
        "latency_p10": t.p10_s * MS,
        "latency_p90": t.p90_s * MS,
        "repeats": t.repeats,
    }


def profile_model(
    model: ModelSpec,
    out_dir: str | Path,
    cfg: ProfileConfig | None = None,
    device_name: str = "local",
    hf_model_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> ProfileResult:
    """Measure `model`'s operators on this machine and write the tables into `out_dir`.

    Writes gemm_perf.csv, context_attention_perf.csv, generation_attention_perf.csv,
    packed_attention_perf.csv, vidur/mlp.csv (memory-bound ops), forward_perf.csv (full forward
    passes of the Hugging Face model in `hf_model_dir`, when given) and device.yaml.
    """
    torch = _torch()
    cfg = cfg or ProfileConfig()
    say = log or (lambda _: None)
    dev = _pick_device(cfg.device)
    torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer(cfg, dev)
    dt = torch.bfloat16
    label = device_label(dev)
    meta = {
        "framework": "torch",
        "version": torch.__version__,
        "device": label,
    }
    t_start = time.perf_counter()
    files: list[Path] = []
    torch.manual_seed(0)

    # ---- GEMMs ----------------------------------------------------------------------------
    say("GEMMs")
    gemm = _Writer(
        out / "gemm_perf.csv", (*COMMON, "gemm_dtype", "m", "n", "k", "latency", *SPREAD)
    )
    best_flops = 0.0
    for _, n, k in gemm_shapes(model):
        w = torch.randn(n, k, dtype=dt, device=dev) * 0.02
        for m in cfg.token_counts:
            x = torch.randn(m, k, dtype=dt, device=dev)
            t = timer(lambda x=x, w=w: torch.nn.functional.linear(x, w))
            best_flops = max(best_flops, 2.0 * m * n * k / t.median_s)
            gemm.add(
                **meta,
                op_name="gemm",
                kernel_source="torch.nn.functional.linear",
                gemm_dtype="bfloat16",
                m=m,
                n=n,
                k=k,
                **_ms(t),
            )
    files.append(gemm.save())

    # ---- attention --------------------------------------------------------------------------
    hq, hkv, d = model.num_heads, model.num_kv_heads, model.head_dim
    sdpa = torch.nn.functional.scaled_dot_product_attention
    gqa = hq != hkv

    def attn(q: Any, k: Any, v: Any, mask: Any = None, causal: bool = False) -> Any:
        return sdpa(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)

    say("prefill attention")
    ctx = _Writer(out / "context_attention_perf.csv", (*COMMON, *ATTN))
    attn_meta = {
        "op_name": "context_attention",
        "kernel_source": "torch.sdpa",
        "num_heads": hq,
        "num_key_value_heads": hkv,
        "head_dim": d,
        "beam_width": 1,
        "attn_dtype": "bfloat16",
        "kv_cache_dtype": "bfloat16",
        "window_size": 0,
    }
    for b in (1, 2, 4):
        for s in cfg.prefill_lengths:
            for cached in (0, s):
                q = torch.randn(b, hq, s, d, dtype=dt, device=dev)
                kk = torch.randn(b, hkv, s + cached, d, dtype=dt, device=dev)
                vv = torch.randn_like(kk)
                if cached:
                    # Query i sits at position cached + i and sees keys 0..cached + i.
                    pos_q = torch.arange(s, device=dev)[:, None] + cached
                    mask = torch.arange(s + cached, device=dev)[None, :] <= pos_q
                    t = timer(lambda q=q, kk=kk, vv=vv, mask=mask: attn(q, kk, vv, mask))
                else:
                    t = timer(lambda q=q, kk=kk, vv=vv: attn(q, kk, vv, causal=True))
                ctx.add(**meta, **attn_meta, batch_size=b, isl=s, step=cached, **_ms(t))
    files.append(ctx.save())

    say("decode attention")
    gen = _Writer(out / "generation_attention_perf.csv", (*COMMON, *ATTN))
    for b in cfg.batch_sizes:
        for c in cfg.contexts:
            q = torch.randn(b, hq, 1, d, dtype=dt, device=dev)
            kk = torch.randn(b, hkv, c, d, dtype=dt, device=dev)
            vv = torch.randn_like(kk)
            t = timer(lambda q=q, kk=kk, vv=vv: attn(q, kk, vv))
            gen.add(
                **meta,
                **{**attn_meta, "op_name": "generation_attention"},
                batch_size=b,
                isl=1,
                step=c - 1,
                **_ms(t),
            )
    files.append(gen.save())

    say("packed attention")
    packed = _Writer(
        out / "packed_attention_perf.csv",
        (
            *COMMON,
            "q_tokens",
            "kv_tokens",
            "num_heads",
            "num_key_value_heads",
            "head_dim",
            "latency",
            *SPREAD,
        ),
    )
    for qn in cfg.packed_queries:
        for kn in cfg.packed_keys:
            if kn < qn:
                continue
            q = torch.randn(1, hq, qn, d, dtype=dt, device=dev)
            kk = torch.randn(1, hkv, kn, d, dtype=dt, device=dev)
            vv = torch.randn_like(kk)
            # An additive float mask over the packed batch, as HF continuous batching builds it.
            mask = torch.zeros(1, 1, qn, kn, dtype=dt, device=dev)
            mask[..., kn - qn :] = torch.triu(
                torch.full((qn, qn), float("-inf"), dtype=dt, device=dev), diagonal=1
            )
            t = timer(lambda q=q, kk=kk, vv=vv, mask=mask: attn(q, kk, vv, mask))
            packed.add(
                **meta,
                op_name="packed_attention",
                kernel_source="torch.sdpa+mask",
                q_tokens=qn,
                kv_tokens=kn,
                num_heads=hq,
                num_key_value_heads=hkv,
                head_dim=d,
                **_ms(t),
            )
    files.append(packed.save())

    # ---- memory-bound ops (Vidur mlp.csv layout) ----------------------------------------------
    say("elementwise ops")
    files.append(_profile_layer_ops(model, out, cfg, timer, dev, label))

    # ---- full forward passes -------------------------------------------------------------------
    if hf_model_dir is not None:
        say("forward passes")
        files.append(_profile_forward(Path(hf_model_dir), out, cfg, timer, dev, meta))

    # ---- device numbers --------------------------------------------------------------------
    say("bandwidth")
    bw = measure_bandwidth(bandwidth_buffer_bytes(model.param_bytes()), timer, dev)
    files.append(
        write_device_yaml(out / "device.yaml", device_name, label, best_flops, bw, cfg.threads)
    )
    return ProfileResult(out, files, device_name, best_flops, bw, time.perf_counter() - t_start)


def _profile_layer_ops(
    model: ModelSpec, out: Path, cfg: ProfileConfig, timer: Timer, dev: str, label: str
) -> Path:
    """One layer's ops timed one by one, written as Vidur's mlp.csv (ms medians)."""
    torch = _torch()
    dt = torch.bfloat16
    m = model
    h, inter = m.hidden_size, m.intermediate_size
    hq, hkv, d = m.num_heads, m.num_kv_heads, m.head_dim
    w_norm = torch.ones(h, dtype=dt, device=dev)
    emb = torch.randn(m.vocab_size, h, dtype=dt, device=dev)
    w_qkv = torch.randn((hq + 2 * hkv) * d, h, dtype=dt, device=dev) * 0.02
    w_o = torch.randn(h, hq * d, dtype=dt, device=dev) * 0.02
    w_up = torch.randn(2 * inter, h, dtype=dt, device=dev) * 0.02
    w_down = torch.randn(h, inter, dtype=dt, device=dev) * 0.02
    lin = torch.nn.functional.linear

    def rms(x: Any) -> Any:  # Llama RMSNorm as Hugging Face writes it
        xf = x.to(torch.float32)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)
        return w_norm * xf.to(dt)

    def rope(q: Any, k: Any, cos: Any, sin: Any) -> tuple[Any, Any]:
        def rot(x: Any) -> Any:
            x1, x2 = x[..., : d // 2], x[..., d // 2 :]
            return torch.cat((-x2, x1), dim=-1)

        return q * cos + rot(q) * sin, k * cos + rot(k) * sin

    cols = [
        "n_head",
        "n_kv_head",
        "n_embd",
        "n_expanded_embd",
        "vocab_size",
        "use_gated_mlp",
        "num_tokens",
        "num_tensor_parallel_workers",
    ]
    ops = VIDUR_OPS
    writer = _Writer(
        out / "vidur" / "compute" / "local" / "model" / "mlp.csv",
        [*cols, *(f"time_stats.{op}.median" for op in ops)],
    )
    for t in cfg.token_counts:
        ids = torch.randint(0, m.vocab_size, (t,), device=dev)
        x = torch.randn(t, h, dtype=dt, device=dev)
        q = torch.randn(t, hq, d, dtype=dt, device=dev)
        k = torch.randn(t, hkv, d, dtype=dt, device=dev)
        cos = torch.randn(t, 1, d, dtype=dt, device=dev)
        sin = torch.randn(t, 1, d, dtype=dt, device=dev)
        gu = torch.randn(t, 2 * inter, dtype=dt, device=dev)
        xi = torch.randn(t, inter, dtype=dt, device=dev)
        xo = torch.randn(t, hq * d, dtype=dt, device=dev)
        fns = {
            "emb": lambda ids=ids: torch.nn.functional.embedding(ids, emb),
            "input_layernorm": lambda x=x: rms(x),
            "attn_pre_proj": lambda x=x: lin(x, w_qkv),
            "attn_rope": lambda q=q, k=k, cos=cos, sin=sin: rope(q, k, cos, sin),
            "attn_post_proj": lambda xo=xo: lin(xo, w_o),
            "post_attention_layernorm": lambda x=x: rms(x),
            "mlp_up_proj": lambda x=x: lin(x, w_up),
            "mlp_act": lambda gu=gu: torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:],
            "mlp_down_proj": lambda xi=xi: lin(xi, w_down),
            "add": lambda x=x: x + x,
        }
        row: dict[str, Any] = {
            "n_head": hq,
            "n_kv_head": hkv,
            "n_embd": h,
            "n_expanded_embd": inter,
            "vocab_size": m.vocab_size,
            "use_gated_mlp": str(bool(m.gated_mlp)),
            "num_tokens": t,
            "num_tensor_parallel_workers": 1,
        }
        for op in ops:
            row[f"time_stats.{op}.median"] = timer(fns[op]).median_s * MS
        writer.add(**row)
    return writer.save()


def _profile_forward(
    model_dir: Path, out: Path, cfg: ProfileConfig, timer: Timer, dev: str, meta: dict
) -> Path:
    """Full forward passes of the Hugging Face model: prefill chunks and batched decode steps."""
    torch = _torch()
    try:
        from transformers import AutoModelForCausalLM, DynamicCache
    except ImportError:
        raise ServesimError(f"Forward-pass profiling needs transformers; {INSTALL_HINT}.") from None
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(dev)
    model.eval()
    vocab = int(model.config.vocab_size)
    writer = _Writer(
        out / "forward_perf.csv",
        (*COMMON, "batch_size", "new_tokens", "cached_tokens", "latency", *SPREAD),
    )

    def run(b: int, new: int, cached: int) -> Timing:
        ids = torch.randint(3, vocab, (b, cached + new), device=dev)
        with torch.inference_mode():
            if cached:
                cache = DynamicCache()
                model(ids[:, :cached], past_key_values=cache, use_cache=True)
                snap = [(layer.keys, layer.values) for layer in cache.layers]

                def step() -> Any:
                    for layer, (kk, vv) in zip(cache.layers, snap, strict=True):
                        layer.keys, layer.values = kk, vv
                    return model(ids[:, cached:], past_key_values=cache, use_cache=True)

                return timer(step)
            return timer(lambda: model(ids, use_cache=False))

    with torch.inference_mode():
        for s in cfg.prefill_lengths:
            t = run(1, s, 0)
            writer.add(
                **meta,
                op_name="forward",
                kernel_source="transformers",
                batch_size=1,
                new_tokens=s,
                cached_tokens=0,
                **_ms(t),
            )
        for b in cfg.batch_sizes:
            for c in cfg.contexts[:3]:
                t = run(b, 1, c)
                writer.add(
                    **meta,
                    op_name="forward",
                    kernel_source="transformers",
                    batch_size=b,
                    new_tokens=1,
                    cached_tokens=c,
                    **_ms(t),
                )
    return writer.save()


BANDWIDTH_BUFFER_MAX_BYTES = 2e9  # far past every cache: the stream rate no longer changes


def bandwidth_buffer_bytes(weight_bytes: float) -> float:
    """The buffer the bandwidth stream copies: the weights' size (what decode streams), but at
    most 2 GB and an eighth of this machine's memory (source and copy must both fit)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 16e9
    return max(8e6, min(weight_bytes, BANDWIDTH_BUFFER_MAX_BYTES, physical / 8))


def measure_bandwidth(nbytes: float, timer: Timer, dev: str) -> float:
    """Bytes per second of a copy over a buffer of `nbytes` (read + write counted)."""
    torch = _torch()
    n = int(max(1e6, nbytes) // 2)
    a = torch.ones(n, dtype=torch.bfloat16, device=dev)
    b = torch.empty_like(a)
    t = timer(lambda: b.copy_(a))
    return 2.0 * 2 * n / t.median_s


def write_device_yaml(
    path: Path, name: str, label: str, peak_flops: float, bw: float, threads: int
) -> Path:
    """A catalog entry for the profiled device from measured numbers (see the comments in it)."""
    mem_gb = 0.0
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        mem_gb = 16.0
    tf = peak_flops / 1e12
    bw_gb = bw / 1e9
    text = f"""# Measured by `servesim profile` on {label} with {threads} thread(s).
# peak_tflops: best bf16 GEMM rate seen (so fitted compute efficiencies are relative to it);
# mem_bw_gb_s: copy bandwidth over a buffer the size of the model's weights (the stream the
# decode GEMMs see); num_sms: compute threads. Links, network and power are placeholders.
devices:
  {name}:
    kind: cpu
    vendor: local
    peak_tflops: {{bf16: {tf:.6g}, fp16: {tf:.6g}, fp32: {tf / 2:.6g}}}
    mem_gb: {mem_gb:.1f}
    mem_bw_gb_s: {bw_gb:.6g}
    num_sms: {threads}
    l2_mb: 2
    link_name: none
    link_bw_gb_s: 10
    link_latency_us: 10
    max_devices_per_node: 1
    net_bw_gb_s: 10
    net_latency_us: 10
    host_bw_gb_s: {bw_gb:.6g}
    idle_power_w: 10
    max_power_w: 30
    price_per_hour: 0.05
"""
    path.write_text(text)
    return path

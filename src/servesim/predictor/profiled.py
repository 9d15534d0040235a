"""Iteration times from measurements, for engines profiled on this machine (DESIGN: "measured").

The roofline in `roofline` is shaped after GPU kernels (64-row tiles, waves over SMs); a CPU core
runs a one-row GEMM in a fraction of a 64-row one, so for engines on CPUs servesim prices an
iteration from what was measured instead, in one of two ways:
- `PackedPredictor`, from the operator tables of `servesim profile` (PyTorch): each GEMM of a
  Hugging Face Llama layer interpolated in its row count, the memory-bound ops in tokens, and
  attention as Hugging Face continuous batching runs it on sdpa/eager: every sequence of the
  iteration packed into one call over all their keys with a block-diagonal mask, which costs
  a + b·K + c·Q·K per layer for Q queries and K keys (a lone query takes another kernel path,
  fitted on its own); plus the time outside the kernels of a forward pass, fitted on measured
  full forward passes (fixed + per token).
- `AffinePredictor`, from an engine's own forward-pass timings (llama.cpp's
  `llama-batched-bench`): seconds = fixed + per token + per sequence with logits + per cached
  token a decode attends to + per causal (query, key) pair of prefill.
The engine's own per-iteration costs (scheduling, sampling, streaming, HTTP) live in its
`EngineProfile` and are fitted on benchmark runs by `fit_engine_overheads`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from servesim.errors import ServesimError
from servesim.predictor.iteration import Predictor
from servesim.predictor.roofline import KernelFit
from servesim.spec.devices import Device
from servesim.spec.engine_profile import EngineProfile
from servesim.spec.model import ModelSpec
from servesim.spec.parallel import Parallel

MS = 1e-3
ELEMENTWISE = ("emb", "input_layernorm", "post_attention_layernorm", "attn_rope", "mlp_act", "add")
LAYER_OPS = ("input_layernorm", "post_attention_layernorm", "attn_rope", "mlp_act", "add", "add")


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ServesimError(f"Profile table {str(path)!r} is missing; run `servesim profile`.")
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


class Curve:
    """Latency against a size: piecewise linear in log-log between measured points, and
    proportional to the size beyond the largest (work grows linearly there)."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        order = np.argsort(x)
        x, y = np.asarray(x, float)[order], np.asarray(y, float)[order]
        keep = np.concatenate([[True], np.diff(x) > 0])  # repeated sizes: keep the first
        self.x, self.y = x[keep], y[keep]
        self.lx, self.ly = np.log(self.x), np.log(self.y)
        if len(self.x) == 1:
            self.slope = 0.0
        else:
            self.slope = (self.y[-1] - self.y[-2]) / (self.x[-1] - self.x[-2])

    def __call__(self, size: np.ndarray | float) -> np.ndarray:
        """Seconds at `size` (array or scalar)."""
        s = np.maximum(np.asarray(size, dtype=float), self.x[0])
        inside = np.exp(np.interp(np.log(s), self.lx, self.ly))
        beyond = self.y[-1] + max(self.slope, 0.0) * (s - self.x[-1])
        return np.where(s > self.x[-1], beyond, inside)


@dataclass(frozen=True)
class PackedAttention:
    """Seconds per layer of one masked attention over Q packed queries and K keys."""

    one: tuple[float, float]  # (a, b) for Q = 1: a + b·K
    many: tuple[float, float, float]  # (a, b, c) for Q > 1: a + b·K + c·Q·K

    def __call__(self, q: float, k: float) -> float:
        """Seconds for Q queries over K keys (0 when there are none)."""
        if q <= 0:
            return 0.0
        if q <= 1:
            a, b = self.one
            return a + b * k
        a, b, c = self.many
        return a + b * k + c * q * k

    @classmethod
    def fit(cls, q: np.ndarray, k: np.ndarray, t: np.ndarray) -> PackedAttention:
        """Least squares on relative error, Q = 1 apart from the rest."""
        q, k, t = (np.asarray(v, float) for v in (q, k, t))

        def solve(a: np.ndarray, y: np.ndarray) -> np.ndarray:
            w = 1.0 / y  # relative residuals
            coef, *_ = np.linalg.lstsq(a * w[:, None], np.ones_like(y), rcond=None)
            return np.maximum(coef, 0.0)

        one = q <= 1
        if one.sum() < 2 or (~one).sum() < 3:
            raise ServesimError("The packed attention table needs Q = 1 and Q > 1 rows.")
        a1 = solve(np.column_stack([np.ones(one.sum()), k[one]]), t[one])
        m = ~one
        a2 = solve(np.column_stack([np.ones(m.sum()), k[m], q[m] * k[m]]), t[m])
        return cls((float(a1[0]), float(a1[1])), (float(a2[0]), float(a2[1]), float(a2[2])))


class OpTables:
    """Measured operators of one model on one device (the output folder of `servesim profile`)."""

    def __init__(self, profile_dir: str | Path) -> None:
        d = Path(profile_dir)
        self.dir = d
        gem: dict[tuple[int, int], tuple[list[float], list[float]]] = {}
        for r in _rows(d / "gemm_perf.csv"):
            xs, ys = gem.setdefault((int(float(r["n"])), int(float(r["k"]))), ([], []))
            xs.append(float(r["m"]))
            ys.append(float(r["latency"]) * MS)
        self.gemm = {nk: Curve(np.array(x), np.array(y)) for nk, (x, y) in gem.items()}
        mlp = sorted((d / "vidur").glob("compute/**/mlp.csv"))
        if not mlp:
            raise ServesimError(f"{str(d)!r} has no vidur/compute/**/mlp.csv; rerun the profile.")
        rows = _rows(mlp[0])
        tok = np.array([float(r["num_tokens"]) for r in rows])
        self.elementwise = {
            op: Curve(tok, np.array([float(r[f"time_stats.{op}.median"]) * MS for r in rows]))
            for op in (
                "emb",
                "input_layernorm",
                "post_attention_layernorm",
                "attn_rope",
                "mlp_act",
                "add",
            )
        }
        p = _rows(d / "packed_attention_perf.csv")
        self.packed = PackedAttention.fit(
            np.array([float(r["q_tokens"]) for r in p]),
            np.array([float(r["kv_tokens"]) for r in p]),
            np.array([float(r["latency"]) * MS for r in p]),
        )
        self.attention: dict[tuple[int, int, int], float] = {}
        for name in ("context_attention_perf.csv", "generation_attention_perf.csv"):
            for r in _rows(d / name):
                key = (int(float(r["batch_size"])), int(float(r["isl"])), int(float(r["step"])))
                self.attention[key] = float(r["latency"]) * MS

    def gemm_s(self, m: np.ndarray | float, n: int, k: int) -> np.ndarray:
        """Seconds of y[m,n] = x[m,k]·W[n,k]ᵀ; an unmeasured (n, k) scales the nearest shape by
        its share of work."""
        if (n, k) in self.gemm:
            return self.gemm[(n, k)](m)
        if not self.gemm:
            raise ServesimError(f"No GEMM rows in {str(self.dir)!r}.")
        near = min(self.gemm, key=lambda nk: abs(math.log(nk[0] * nk[1] / (n * k))))
        return self.gemm[near](m) * (n * k) / (near[0] * near[1])


@dataclass(frozen=True)
class HfLayer:
    """The operators one Hugging Face Llama decoder layer runs, by their measured tables."""

    gemms: tuple[tuple[int, int], ...]  # (n, k) of q, k, v, o, gate, up, down

    @classmethod
    def of(cls, m: ModelSpec) -> HfLayer:
        """The layer of a dense Llama-family model (separate q/k/v and gate/up projections)."""
        if m.is_moe or m.is_mla:
            raise ServesimError("The measured predictor covers dense Llama-family models only.")
        q, kv, h, i = (
            m.num_heads * m.head_dim,
            m.num_kv_heads * m.head_dim,
            m.hidden_size,
            (m.intermediate_size),
        )
        mlp = ((i, h), (i, h), (h, i)) if m.gated_mlp else ((i, h), (h, i))
        return cls(((q, h), (kv, h), (kv, h), (h, q), *mlp))


def dense_forward_s(
    tables: OpTables, model: ModelSpec, tokens: np.ndarray, lm_rows: np.ndarray
) -> np.ndarray:
    """Seconds of every kernel of a forward pass but attention: embedding, the layers' GEMMs and
    memory-bound ops, the final norm and the LM head on `lm_rows` rows."""
    t = np.asarray(tokens, float)
    layer = sum(tables.gemm_s(t, n, k) for n, k in HfLayer.of(model).gemms)
    layer = layer + sum(tables.elementwise[op](t) for op in LAYER_OPS)
    total = model.num_layers * layer + tables.elementwise["emb"](t)
    total = total + tables.elementwise["input_layernorm"](t)  # final norm
    return total + tables.gemm_s(np.asarray(lm_rows, float), model.vocab_size, model.hidden_size)


@dataclass(frozen=True)
class ForwardOverhead:
    """Seconds per forward pass outside the measured kernels (Python module calls, masks,
    rotary tables): a fixed part plus a part per token."""

    fixed_s: float = 0.0
    per_token_s: float = 0.0

    def __call__(self, tokens: float) -> float:
        """Seconds for a forward pass over `tokens` tokens."""
        return self.fixed_s + self.per_token_s * tokens


def fit_forward_overhead(tables: OpTables, model: ModelSpec) -> tuple[ForwardOverhead, np.ndarray]:
    """Fit measured full forward passes minus their kernels as fixed + per-token seconds (robust
    least squares); also returns each row's residual (measured minus kernels)."""
    from scipy.optimize import least_squares

    rows = _rows(tables.dir / "forward_perf.csv")
    tok, res = [], []
    for r in rows:
        b, new, cached = (int(float(r[c])) for c in ("batch_size", "new_tokens", "cached_tokens"))
        key = (b, new, cached - 1) if new == 1 else (b, new, cached)
        if key not in tables.attention:
            continue
        t = np.array([b * new], float)
        kernels = dense_forward_s(tables, model, t, t)[0]
        kernels += model.num_layers * tables.attention[key]
        tok.append(float(b * new))
        res.append(float(r["latency"]) * MS - kernels)
    if len(res) < 2:
        raise ServesimError("forward_perf.csv has too few rows matching the attention tables.")
    x, y = np.array(tok), np.array(res)
    scale = max(float(np.median(np.abs(y))), 1e-6)
    # Start inside the bounds: on a busy machine the kernels can time slower than whole
    # passes, leaving a negative median residual (and no overhead to find).
    fit = least_squares(
        lambda p: (p[0] + p[1] * x - y) / scale,
        [max(float(np.median(y)), 0.0), 0.0],
        bounds=([0.0, 0.0], [np.inf, np.inf]),
        loss="soft_l1",
        f_scale=0.1,
    )
    return ForwardOverhead(float(fit.x[0]), float(fit.x[1])), y


class PackedPredictor(Predictor):
    """A Predictor for engines that run one packed, masked attention per iteration (Hugging Face
    continuous batching), with every kernel time interpolated from measured tables."""

    def __init__(
        self,
        model: ModelSpec,
        device: Device,
        engine: EngineProfile,
        tables: OpTables,
        overhead: ForwardOverhead,
        fit: KernelFit | None = None,
    ) -> None:
        super().__init__(model, device, Parallel(), engine, fit)
        self.tables = tables
        self.forward_overhead = overhead
        size = 1 << 14
        grid = np.arange(size, dtype=float)
        grid[0] = 1.0
        layer = sum(tables.gemm_s(grid, n, k) for n, k in HfLayer.of(model).gemms)
        layer = layer + sum(tables.elementwise[op](grid) for op in LAYER_OPS)
        body = model.num_layers * layer + tables.elementwise["emb"](grid)
        body = body + tables.elementwise["input_layernorm"](grid)
        body[0] = 0.0
        lm = tables.gemm_s(grid, model.vocab_size, model.hidden_size)
        lm[0] = 0.0
        self._body = body.tolist()
        self._lm = lm.tolist()
        self._pa = tables.packed
        self._layers = model.num_layers

    def _body_s(self, tokens: int, seqs: int) -> float:
        if tokens >= len(self._body) or seqs >= len(self._lm):
            t = np.array([float(tokens)])
            return float(dense_forward_s(self.tables, self.model, t, np.array([float(seqs)]))[0])
        return self._body[tokens] + self._lm[seqs]

    def step_s(self, decode_seqs: int, decode_context: int, prefill) -> float:  # type: ignore[override]
        """Seconds of one iteration: kernels of one packed forward pass, its overhead outside the
        kernels, and the engine's per-iteration costs."""
        q = decode_seqs
        k = decode_context
        n_pre = 0
        for new, cached in prefill:
            q += new
            k += new + cached
            n_pre += 1
        if q == 0:
            return 0.0
        # Every sequence that completes its prompt or decodes samples one token.
        t = self._body_s(q, decode_seqs + n_pre) + self._layers * self._pa(q, k)
        return t + self.forward_overhead(q) + self.overhead_s(decode_seqs, n_pre)

    def _decode_step_coeffs(self, n: int) -> tuple[float, float]:
        """(c0, c1) of a decode-only iteration: the context enters only through attention."""
        if n <= 0:
            return 0.0, 0.0
        c0 = self._body_s(n, n) + self.forward_overhead(n) + self.overhead_s(n, 0)
        if n == 1:
            a, b = self._pa.one
        else:
            a, b0, c = self._pa.many
            b = b0 + c * n
        return c0 + self._layers * a, self._layers * b


@dataclass(frozen=True)
class IterationModel:
    """Seconds of one forward pass as an affine function of what it carries, fitted on an
    engine's own timings (llama.cpp's `llama-batched-bench`): a fixed part, per token, per
    sequence that gets logits, per cached token a decode attends to, and per (query, key) pair
    of prefill attention."""

    fixed_s: float
    per_token_s: float
    per_logit_s: float
    per_context_token_s: float
    per_attn_pair_s: float

    def __call__(self, tokens: float, logits: float, context: float, pairs: float) -> float:
        """Seconds of one forward pass."""
        return (
            self.fixed_s
            + self.per_token_s * tokens
            + self.per_logit_s * logits
            + self.per_context_token_s * context
            + self.per_attn_pair_s * pairs
        )


def _pairs(new: float, cached: float) -> float:
    """Causal (query, key) pairs of a chunk of `new` tokens after `cached` ones."""
    return new * (cached + (new + 1) / 2.0)


def batched_bench_features(row: dict, batch: int) -> list[tuple[list[float], float]]:
    """(features summed over forward passes, seconds) of a llama-batched-bench JSONL row: its
    prompt phase (B prompts of pp tokens in chunks of `batch` tokens) and its decode phase."""
    b, pp, tg = int(row["pl"]), int(row["pp"]), int(row["tg"])
    out = []
    # Prompt phase: the B prompts laid end to end, cut into chunks of `batch` tokens.
    feats = np.zeros(5)
    pos = 0
    total = b * pp
    while pos < total:
        end = min(total, pos + batch)
        f = np.array([1.0, end - pos, 0.0, 0.0, 0.0])
        for seq in range(b):
            lo, hi = max(pos, seq * pp), min(end, (seq + 1) * pp)
            if hi > lo:
                f[4] += _pairs(hi - lo, lo - seq * pp)
                f[2] += hi == (seq + 1) * pp  # the prompt's last token gets logits
        feats += f
        pos = end
    out.append((feats.tolist(), float(row["t_pp"])))
    # Decode phase: tg steps of B tokens, each sequence attending to its prompt and outputs.
    ctx = sum(b * (pp + j + 1) for j in range(tg))
    out.append(([float(tg), float(b * tg), float(b * tg), float(ctx), 0.0], float(row["t_tg"])))
    return out


def fit_iteration_model(rows: list[dict], batch: int) -> tuple[IterationModel, np.ndarray]:
    """Non-negative least squares on relative error over llama-batched-bench rows; also returns
    the relative error of each fitted phase."""
    from scipy.optimize import nnls

    feats, secs = [], []
    for r in rows:
        for f, t in batched_bench_features(r, batch):
            feats.append(f)
            secs.append(t)
    a, y = np.array(feats), np.array(secs)
    if len(y) < 5:
        raise ServesimError("Need at least 5 timed phases to fit an iteration model.")
    scale = a.max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(a / scale / y[:, None], np.ones(len(y)))
    coef = coef / scale
    return IterationModel(*(float(c) for c in coef)), a @ coef / y - 1.0


class AffinePredictor(Predictor):
    """A Predictor whose forward pass is an `IterationModel` (per-sequence attention)."""

    def __init__(
        self, model: ModelSpec, device: Device, engine: EngineProfile, it: IterationModel
    ) -> None:
        super().__init__(model, device, Parallel(), engine)
        self.it = it

    def step_s(self, decode_seqs: int, decode_context: int, prefill) -> float:  # type: ignore[override]
        """Seconds of one iteration: one forward pass plus the engine's per-iteration costs."""
        tokens, pairs, n_pre = decode_seqs, 0.0, 0
        for new, cached in prefill:
            tokens += new
            pairs += _pairs(new, cached)
            n_pre += 1
        if tokens == 0:
            return 0.0
        fwd = self.it(tokens, decode_seqs + n_pre, decode_context, pairs)
        return fwd + self.overhead_s(decode_seqs, n_pre)

    def _decode_step_coeffs(self, n: int) -> tuple[float, float]:
        """(c0, c1) of a decode-only iteration of n sequences."""
        if n <= 0:
            return 0.0, 0.0
        return self.it(n, n, 0.0, 0.0) + self.overhead_s(n, 0), self.it.per_context_token_s


@dataclass(frozen=True)
class ProfiledTiming:
    """Iteration costs measured on this machine, for a `Deployment` whose replica runs on a CPU:
    an iteration model (priced by `AffinePredictor`), else operator tables with the forward
    pass's overhead (priced by `PackedPredictor`)."""

    tables: OpTables | None = None
    forward_overhead: ForwardOverhead = ForwardOverhead()
    iteration: IterationModel | None = None

    def __post_init__(self) -> None:
        if self.tables is None and self.iteration is None:
            raise ServesimError("Profiled timing needs operator tables or an iteration model.")

    def predictor(
        self, model: ModelSpec, device: Device, engine: EngineProfile, fit: KernelFit | None
    ) -> Predictor:
        """The measured predictor of one replica: the iteration model, else the tables."""
        if self.iteration is not None:
            return AffinePredictor(model, device, engine, self.iteration)
        assert self.tables is not None
        return PackedPredictor(model, device, engine, self.tables, self.forward_overhead, fit)

"""Load generator for OpenAI-compatible servers: replay a workload, record every token's arrival.

`run` sends a `Workload` open loop (each request at its arrival time) or a `ClosedLoop` of N
clients to `/v1/completions` (or `/v1/chat/completions`), streaming. Prompts have exactly the
requested number of tokens for the server's tokenizer (`WordPrompts`: one word is one token,
with the tokens the server adds itself, such as BOS, measured by `probe_prompt_offset`;
`TokenizerPrompts`: a Hugging Face tokenizer.json; `TokenIdPrompts`: token ids sent as the
prompt). Output lengths are forced per engine (`output_fields`) and checked against the usage
the server returns. Every request ends with one status of `STATUSES`; nothing is retried
silently, nothing waits past the run's deadline, and the columns (`BenchResult.columns`) are
the ones `servesim simulate` writes plus `status`, `error`, `http_status` and `token_times_s`.
Needs aiohttp (`pip install 'servesim[measure]'`).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from servesim.errors import ServesimError
from servesim.sim.metrics import ItlHistogram, Slo, add_derived, summarize
from servesim.sim.synthetic import ClosedLoop
from servesim.sim.workload import Workload

STATUSES = (
    "ok",  # every requested token arrived and the stream ended normally
    "truncated",  # the stream ended normally with fewer (or more) tokens than requested
    "http_4xx",  # the server refused the request
    "http_5xx",  # the server failed
    "timeout",  # no complete answer within the per-request timeout or the run deadline
    "refused",  # the connection could not be opened
    "dropped",  # the connection or the stream broke before the end
    "not_sent",  # the run's deadline passed before the request's turn
)
ENGINES = ("vllm", "sglang", "llama.cpp", "hf", "openai")
INSTALL_HINT = "install it with pip install 'servesim[measure]'"


def _aiohttp() -> Any:
    try:
        import aiohttp
    except ImportError:
        raise ServesimError(f"servesim bench needs aiohttp; {INSTALL_HINT}.") from None
    return aiohttp


# ---- what to send -----------------------------------------------------------------------------
def output_fields(engine: str, tokens: int) -> dict[str, Any]:
    """Request fields that make `engine` generate exactly `tokens` tokens (no early stop)."""
    if engine in ("vllm", "sglang"):
        return {"max_tokens": tokens, "min_tokens": tokens, "ignore_eos": True, "temperature": 0}
    if engine == "llama.cpp":
        return {"max_tokens": tokens, "n_predict": tokens, "ignore_eos": True, "temperature": 0}
    if engine == "hf":
        # transformers serve rejects unknown fields; eos_token_id -1 disables the stop token.
        gen = {"eos_token_id": -1, "do_sample": False, "max_new_tokens": tokens}
        return {"max_tokens": tokens, "generation_config": json.dumps(gen)}
    if engine == "openai":
        return {"max_tokens": tokens}
    raise ServesimError(f"Unknown engine {engine!r} for bench; use one of {', '.join(ENGINES)}.")


class Prompts(Protocol):
    """Builds a prompt of a given token count for the server's tokenizer."""

    def build(self, tokens: int, rng: np.random.Generator) -> str | list[int]: ...


@dataclass
class WordPrompts:
    """Random words from a list in which every word is one token; `offset` tokens the server
    adds itself (BOS, a chat template) are left out so the server sees exactly `tokens`."""

    words: Sequence[str]
    offset: int = 0

    def __post_init__(self) -> None:
        self.words = [w.strip() for w in self.words if w.strip()]
        if not self.words:
            raise ServesimError("The word list is empty; give one word (one token) per line.")

    @classmethod
    def from_file(cls, path: str | Path, offset: int = 0) -> WordPrompts:
        """Read one word per line."""
        p = Path(path)
        try:
            return cls(p.read_text(encoding="utf-8-sig").split(), offset)  # BOM too
        except UnicodeDecodeError:
            raise ServesimError(
                f"Word list {str(p)!r} is not UTF-8 text; save it as UTF-8."
            ) from None
        except OSError as exc:
            raise ServesimError(f"Cannot read word list {str(p)!r} ({exc.strerror}).") from None

    def build(self, tokens: int, rng: np.random.Generator) -> str:
        """`tokens - offset` random words joined by spaces (at least one)."""
        n = max(1, tokens - self.offset)
        idx = rng.integers(0, len(self.words), n)
        return " ".join(self.words[i] for i in idx)


@dataclass
class TokenIdPrompts:
    """Random token ids sent as the prompt (vLLM, SGLang and llama.cpp accept a list of ids)."""

    vocab_size: int
    offset: int = 0
    first_id: int = 3  # skip the usual special ids (0-2)

    def build(self, tokens: int, rng: np.random.Generator) -> list[int]:
        """`tokens - offset` ids drawn uniformly from the vocabulary."""
        n = max(1, tokens - self.offset)
        return rng.integers(self.first_id, self.vocab_size, n).tolist()


@dataclass
class TokenizerPrompts:
    """Text of exactly the requested length for a Hugging Face tokenizer (tokenizer.json)."""

    path: str
    offset: int = 0
    _tok: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ServesimError(
                f"--tokenizer needs the tokenizers package; {INSTALL_HINT}."
            ) from None
        p = Path(self.path)
        p = p / "tokenizer.json" if p.is_dir() else p
        try:
            self._tok = Tokenizer.from_file(str(p))
        except Exception as exc:
            raise ServesimError(f"Cannot load tokenizer {str(p)!r} ({exc}).") from None

    def count(self, text: str) -> int:
        """Tokens of `text` without special tokens."""
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def build(self, tokens: int, rng: np.random.Generator) -> str:
        """Decode random ids, re-encode, and trim or extend until the count is exact."""
        want = max(1, tokens - self.offset)
        vocab = self._tok.get_vocab_size()
        ids = rng.integers(3, vocab, want).tolist()
        text = self._tok.decode(ids)
        for _ in range(20):
            enc = self._tok.encode(text, add_special_tokens=False).ids
            if len(enc) == want:
                return text
            if len(enc) > want:
                text = self._tok.decode(enc[:want])
            else:
                text = text + self._tok.decode(rng.integers(3, vocab, want - len(enc)).tolist())
        raise ServesimError(
            f"Could not build a prompt of exactly {want} tokens for tokenizer {self.path!r}; "
            "use a word list (--words) instead."
        )


@dataclass(frozen=True)
class Target:
    """The server under test."""

    url: str  # e.g. http://127.0.0.1:8000
    model: str
    engine: str = "vllm"
    chat: bool = False
    api_key: str | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ServesimError(
                f"Unknown engine {self.engine!r} for bench; use one of {', '.join(ENGINES)}."
            )
        if not self.url.startswith(("http://", "https://")):
            raise ServesimError(f"Server URL {self.url!r} must start with http:// or https://.")

    @property
    def endpoint(self) -> str:
        """The completions URL."""
        base = self.url.rstrip("/")
        base = base[: -len("/v1")] if base.endswith("/v1") else base
        return f"{base}/v1/chat/completions" if self.chat else f"{base}/v1/completions"

    def payload(self, prompt: str | list[int], output_tokens: int, stream: bool = True) -> dict:
        """The JSON body of one request."""
        body: dict[str, Any] = {"model": self.model, "stream": stream}
        if self.chat:
            text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = prompt
        if stream and self.engine in ("vllm", "sglang", "openai"):
            body["stream_options"] = {"include_usage": True}
        body.update(output_fields(self.engine, output_tokens))
        return body

    def headers(self) -> dict[str, str]:
        """HTTP headers (JSON, and a bearer token when given)."""
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h


# ---- one request ------------------------------------------------------------------------------
@dataclass
class Record:
    """What happened to one request. Times in seconds from the run's start (-1: never)."""

    prompt_tokens: int
    output_tokens: int
    arrival_s: float = -1.0  # scheduled arrival (open loop) or send time (closed loop)
    send_s: float = -1.0
    first_token_s: float = -1.0
    last_token_s: float = -1.0
    end_s: float = -1.0
    token_times_s: list[float] = field(default_factory=list)
    generated: int = 0  # from the server's usage when given, else tokens counted
    counted: int = 0  # content chunks received
    server_prompt_tokens: int = -1
    http_status: int = 0
    status: str = "not_sent"
    error: str = ""


class _StreamEnd(Exception):
    """The stream closed before the server said it was done."""


def _text_of(choice: dict, chat: bool) -> str:
    if chat:
        delta = choice.get("delta") or {}
        return str(delta.get("content") or "")
    return str(choice.get("text") or "")


async def _consume(resp: Any, rec: Record, chat: bool, t0: float) -> tuple[bool, dict | None]:
    """Read an SSE stream: token times into `rec`; returns (saw the end, usage)."""
    usage = None
    finished = False
    buf = b""
    async for chunk in resp.content.iter_any():
        now = time.perf_counter() - t0
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, event names
            data = line[5:].strip()
            if data == b"[DONE]":
                return True, usage
            try:
                obj = json.loads(data)
            except ValueError:
                raise _StreamEnd(f"malformed event {data[:80]!r}") from None
            if not isinstance(obj, dict):
                continue
            if obj.get("error"):
                raise _StreamEnd(f"server error in stream: {str(obj['error'])[:200]}")
            if obj.get("usage"):
                usage = obj["usage"]
            for choice in obj.get("choices") or []:
                if _text_of(choice, chat):
                    rec.counted += 1
                    rec.token_times_s.append(now)
                if choice.get("finish_reason"):
                    finished = True
    return finished, usage


def _usage_int(usage: dict | None, key: str) -> int | None:
    if not usage or usage.get(key) is None:
        return None
    try:
        return int(usage[key])
    except (TypeError, ValueError):
        return None


async def _request(
    session: Any, target: Target, rec: Record, body: dict, timeout_s: float, t0: float
) -> None:
    """Send one request and fill `rec`; never raises (except cancellation)."""
    aiohttp = _aiohttp()
    rec.send_s = time.perf_counter() - t0
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(target.endpoint, json=body, headers=target.headers()) as resp:
                rec.http_status = resp.status
                if resp.status >= 400:
                    text = (await resp.text())[:200]
                    rec.status = "http_5xx" if resp.status >= 500 else "http_4xx"
                    rec.error = f"HTTP {resp.status}: {text}"
                    return
                finished, usage = await _consume(resp, rec, target.chat, t0)
        rec.end_s = time.perf_counter() - t0
        if not finished and usage is None:
            rec.status, rec.error = "dropped", "stream ended without a finish"
            return
        gen = _usage_int(usage, "completion_tokens")
        rec.generated = gen if gen is not None else rec.counted
        sp = _usage_int(usage, "prompt_tokens")
        rec.server_prompt_tokens = sp if sp is not None else -1
        if rec.token_times_s:
            rec.first_token_s, rec.last_token_s = rec.token_times_s[0], rec.token_times_s[-1]
        if rec.generated != rec.output_tokens or not rec.token_times_s:
            rec.status = "truncated"
            rec.error = f"{rec.generated} tokens generated, {rec.output_tokens} requested"
        else:
            rec.status = "ok"
            if rec.counted != rec.generated:
                rec.error = f"{rec.counted} chunks for {rec.generated} tokens"
    except TimeoutError:
        rec.status, rec.error = "timeout", f"no complete answer within {timeout_s:g} s"
    except _StreamEnd as exc:
        rec.status, rec.error = "dropped", str(exc)
    except aiohttp.ClientConnectorError as exc:
        rec.status, rec.error = "refused", str(exc)[:200]
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
        rec.status, rec.error = "dropped", f"{type(exc).__name__}: {str(exc)[:200]}"
    except (aiohttp.ClientError, OSError) as exc:
        rec.status, rec.error = "dropped", f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        if rec.end_s < 0:
            rec.end_s = time.perf_counter() - t0
        if rec.token_times_s and rec.first_token_s < 0:
            rec.first_token_s = rec.token_times_s[0]
            rec.last_token_s = rec.token_times_s[-1]


# ---- a run -----------------------------------------------------------------------------------
@dataclass
class BenchResult:
    """Every request of a run and how it went."""

    records: list[Record]
    target: Target
    workload: str
    wall_s: float

    def columns(self) -> dict[str, np.ndarray]:
        """Per-request columns in `servesim simulate`'s schema plus the measurement's own."""
        recs = self.records
        n = len(recs)
        ok = np.array([r.status == "ok" for r in recs], dtype=bool)
        first = np.array([r.first_token_s for r in recs], dtype=np.float64)
        last = np.array([r.last_token_s for r in recs], dtype=np.float64)
        token_times = np.empty(n, dtype=object)
        for i, r in enumerate(recs):
            token_times[i] = [float(x) for x in r.token_times_s]
        cols: dict[str, np.ndarray] = {
            "request_id": np.arange(n, dtype=np.int64),
            "arrival_s": np.array([r.arrival_s for r in recs], dtype=np.float64),
            "prompt_tokens": np.array([r.prompt_tokens for r in recs], dtype=np.int64),
            "output_tokens": np.array([r.output_tokens for r in recs], dtype=np.int64),
            "scheduled_s": np.full(n, -1.0),
            "first_token_s": first,
            "finish_s": np.where(ok, last, -1.0),
            "generated_tokens": np.array([r.generated for r in recs], dtype=np.int64),
            "preemptions": np.zeros(n, dtype=np.int64),
            "replica": np.full(n, -1, dtype=np.int64),
            "priority": np.zeros(n, dtype=np.int64),
        }
        cols = add_derived(cols)
        cols.update(
            {
                "send_s": np.array([r.send_s for r in recs], dtype=np.float64),
                "end_s": np.array([r.end_s for r in recs], dtype=np.float64),
                "server_prompt_tokens": np.array(
                    [r.server_prompt_tokens for r in recs], dtype=np.int64
                ),
                "chunks": np.array([r.counted for r in recs], dtype=np.int64),
                "status": np.array([r.status for r in recs], dtype=object),
                "error": np.array([r.error for r in recs], dtype=object),
                "http_status": np.array([r.http_status for r in recs], dtype=np.int64),
                "token_times_s": token_times,
            }
        )
        return cols

    def itl(self) -> ItlHistogram:
        """Gaps between consecutive tokens of completed requests."""
        h = ItlHistogram()
        for r in self.records:
            if r.status == "ok":
                for a, b in zip(r.token_times_s, r.token_times_s[1:], strict=False):
                    h.add(b - a)
        return h

    def status_counts(self) -> dict[str, int]:
        """Requests per status (every status listed, zeros included)."""
        counts = dict.fromkeys(STATUSES, 0)
        for r in self.records:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    def summary(self, slo: Slo | None = None) -> dict[str, Any]:
        """The same summary `servesim simulate` prints, plus status counts and length checks."""
        cols = self.columns()
        counts = self.status_counts()
        sent = cols["server_prompt_tokens"] >= 0
        prompt_off = int(np.sum(sent & (cols["server_prompt_tokens"] != cols["prompt_tokens"])))
        return summarize(
            cols,
            slo,
            self.itl(),
            extra={
                "deployment": f"{self.target.engine} at {self.target.url}",
                "workload": self.workload,
                "statuses": counts,
                "errors": sum(v for k, v in counts.items() if k != "ok"),
                "prompt_length_mismatches": prompt_off,
                "bench_wall_s": self.wall_s,
            },
        )


def _rng_for(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, i])


class _Progress:
    """A rich progress bar that shows completed requests and errors (or nothing)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn("bench"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[errors]} errors"),
                TimeElapsedColumn(),
            )
            self.task = self.bar.add_task("bench", total=total, errors=0)
        self.errors = 0

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def done(self, rec: Record) -> None:
        self.errors += rec.status != "ok"
        if self.bar is not None:
            self.bar.update(self.task, advance=1, errors=self.errors)


async def _run_async(
    target: Target,
    work: Workload | ClosedLoop,
    prompts: Prompts,
    timeout_s: float,
    deadline_s: float,
    max_concurrency: int,
    seed: int,
    progress: bool,
) -> BenchResult:
    closed = isinstance(work, ClosedLoop)
    if closed and work.paced:
        raise ServesimError(
            "bench sends a closed loop's requests as soon as a client is free; it does not run "
            "a ramp, a request rate or a warm-up phase yet: drop --ramp-s and "
            "--warmup-requests, or use --client-protocol vllm_bench_serve or lockstep."
        )
    aiohttp = _aiohttp()
    p_tok = np.asarray(work.prompt_tokens, dtype=np.int64)
    o_tok = np.asarray(work.output_tokens, dtype=np.int64)
    n = len(p_tok)
    recs = [Record(int(p_tok[i]), int(o_tok[i])) for i in range(n)]
    # A closed loop with a prompt pool (`--prompt-pool`, aiperf's dataset entries) sends each
    # entry's same text again, as the simulation assumes (its prefix cache serves repeats).
    entry = work.entry_of if closed else None
    texts: dict[int, str] = {}

    def text(i: int) -> str:
        k = int(entry[i]) if entry is not None else i
        if k not in texts:
            texts[k] = prompts.build(int(p_tok[i]), _rng_for(seed, k))
        return texts[k]

    bodies = [target.payload(text(i), int(o_tok[i])) for i in range(n)]
    sem = asyncio.Semaphore(max_concurrency)
    # One connection per request: servers that close a finished stream's connection (llama.cpp)
    # would otherwise fail the next request that reuses it.
    connector = aiohttp.TCPConnector(limit=max_concurrency, force_close=True)
    # Socket-level timeouts are left to our own per-request timeout and the run deadline.
    session_timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(timeout_s, 30.0))
    t0 = time.perf_counter()
    end_at = deadline_s

    def left() -> float:
        return end_at - (time.perf_counter() - t0)

    async with aiohttp.ClientSession(connector=connector, timeout=session_timeout) as session:
        with _Progress(n, progress) as bar:

            async def one(i: int) -> None:
                rec = recs[i]
                async with sem:
                    remaining = left()
                    if remaining <= 0:
                        rec.status, rec.error = "not_sent", "run deadline passed before sending"
                    else:
                        await _request(
                            session, target, rec, bodies[i], min(timeout_s, remaining), t0
                        )
                        if rec.status == "timeout" and remaining < timeout_s:
                            rec.error = f"run deadline ({deadline_s:g} s) reached"
                bar.done(rec)

            if not closed:
                arrivals = np.asarray(work.arrival_s, dtype=np.float64)
                arrivals = arrivals - (arrivals[0] if n else 0.0)
                tasks = []
                for i in range(n):
                    recs[i].arrival_s = float(arrivals[i])
                    wait = arrivals[i] - (time.perf_counter() - t0)
                    if wait > 0:
                        if wait >= left():
                            break
                        await asyncio.sleep(wait)
                    tasks.append(asyncio.create_task(one(i)))
                for i in range(len(tasks), n):
                    recs[i].arrival_s = float(arrivals[i])
                    recs[i].error = "run deadline passed before its arrival time"
                    bar.done(recs[i])
                if tasks:
                    await asyncio.wait(tasks, timeout=max(0.0, left()) + 5.0)
                    for t in tasks:
                        t.cancel()
            else:
                delays = work.delays_s
                n_clients = min(work.clients, n)
                next_i = n_clients

                async def client(i: int, wait: float) -> None:
                    # As the simulator does it: a client's first request goes at its jitter;
                    # when one ends, the client takes the next request and sends it that
                    # request's think time (plus jitter) later.
                    nonlocal next_i
                    while left() > 0:
                        if wait > 0:
                            await asyncio.sleep(wait)
                        recs[i].arrival_s = time.perf_counter() - t0
                        await one(i)
                        if next_i >= n:
                            return
                        i, next_i = next_i, next_i + 1
                        wait = float(delays[i])

                clients = [
                    asyncio.create_task(client(c, float(delays[c] - work.think_s)))
                    for c in range(n_clients)
                ]
                await asyncio.wait(clients, timeout=max(0.0, left()) + 5.0)
                for t in clients:
                    t.cancel()
                for r in recs:
                    if r.status == "not_sent" and not r.error:
                        r.error = "run deadline passed before a client was free"
                        bar.done(r)
    wall = time.perf_counter() - t0
    label = (
        f"closed loop, {work.clients} clients, {n} requests"
        if closed
        else (getattr(work, "name", "") or f"{n} requests")
    )
    return BenchResult(recs, target, label, wall)


def run(
    target: Target,
    work: Workload | ClosedLoop,
    prompts: Prompts,
    timeout_s: float = 120.0,
    deadline_s: float = 3600.0,
    max_concurrency: int = 256,
    seed: int = 0,
    progress: bool = False,
) -> BenchResult:
    """Replay `work` against `target` and return every request's record.

    Open loop sends each request at its arrival time (shifted so the first is at 0); a closed
    loop starts `clients` clients at once. At most `max_concurrency` requests are in flight;
    each gets `timeout_s` seconds, and nothing runs past `deadline_s` from the start.
    """
    if not (timeout_s > 0 and deadline_s > 0 and math.isfinite(deadline_s)):
        raise ServesimError("--timeout and --deadline must be positive finite seconds.")
    if max_concurrency < 1:
        raise ServesimError("--max-concurrency must be >= 1.")
    coro = _run_async(target, work, prompts, timeout_s, deadline_s, max_concurrency, seed, progress)
    return asyncio.run(coro)


async def _probe(target: Target, prompt: str | list[int], timeout_s: float) -> dict:
    aiohttp = _aiohttp()
    body = target.payload(prompt, 1, stream=False)
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as s,
            s.post(target.endpoint, json=body, headers=target.headers()) as resp,
        ):
            text = await resp.text()
            if resp.status >= 400:
                raise ServesimError(
                    f"The server at {target.endpoint} answered HTTP {resp.status} to a probe "
                    f"request ({text[:150]}); check the model name and engine."
                )
            try:
                return json.loads(text)
            except ValueError:
                raise ServesimError(
                    f"The server at {target.endpoint} answered a probe request with something "
                    f"that is not JSON ({text[:100]!r}); is it an OpenAI-compatible server?"
                ) from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ServesimError(
            f"Cannot reach the server at {target.endpoint} ({type(exc).__name__}); is it running?"
        ) from None


def probe_prompt_offset(target: Target, prompts: Prompts, timeout_s: float = 60.0) -> int:
    """Tokens the server adds to a prompt of one token (BOS, chat template), from its usage."""
    prompt = prompts.build(1 + getattr(prompts, "offset", 0), np.random.default_rng(0))
    doc = asyncio.run(_probe(target, prompt, timeout_s))
    used = _usage_int(doc.get("usage"), "prompt_tokens")
    if used is None:
        raise ServesimError(
            f"The server at {target.endpoint} returns no usage.prompt_tokens; give the tokens it "
            "adds to every prompt with --prompt-offset."
        )
    return used - 1


def wait_ready(url: str, timeout_s: float = 120.0, path: str = "/health") -> None:
    """Poll `url + path` until it answers 200, or raise ServesimError after `timeout_s`."""
    import urllib.error
    import urllib.request

    end = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url.rstrip("/") + path, timeout=2.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise ServesimError(f"The server at {url} was not ready within {timeout_s:g} s ({last}).")

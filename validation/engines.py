"""Real engines on this machine: a random-weight Llama checkpoint, and servers started on 127.0.0.1.

Latency depends on the architecture, not on the weights, so a randomly initialised model with a
word-level vocabulary (every word of `words.txt` is one token in both the Hugging Face tokenizer
and the GGUF conversion) measures a real engine without downloading anything. Each engine runs
pinned to one core with one compute thread; the load generator runs on the other core.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from itertools import product
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LLAMA_CPP_VERSION = "0.3.36"  # llama-cpp-python sdist whose vendored llama.cpp we build
BUILD_DIR = Path(os.environ.get("SERVESIM_BUILD_DIR", "/work/build"))
SPACE = "\u2581"  # sentencepiece's word-start marker


@dataclass(frozen=True)
class Arch:
    """A Llama architecture small enough for one CPU core."""

    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096


TINY = Arch()
SMALL = Arch(512, 1536, 8, 8, 2, 4096)


def words() -> list[str]:
    """The word list: every two-letter lowercase word ('aa' ... 'zz'), one token each."""
    return ["".join(p) for p in product(string.ascii_lowercase, repeat=2)]


def _tokenizer_json() -> dict:
    """A Llama-2-style byte-fallback BPE whose merges make each word of `words()` one token."""
    from tokenizers import Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    vocab[SPACE] = len(vocab)
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
    merges: list[tuple[str, str]] = []
    for c in string.ascii_lowercase:
        vocab[SPACE + c] = len(vocab)
        merges.append((SPACE, c))
    for w in words():
        vocab[SPACE + w] = len(vocab)
        merges.append((SPACE + w[0], w[1]))
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)]
    )
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace(SPACE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return json.loads(tok.to_str())


def make_model(out_dir: str | Path, arch: Arch = TINY, seed: int = 0) -> Path:
    """Write a random-weight bf16 Llama checkpoint with the word tokenizer to `out_dir`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tj = _tokenizer_json()
    vocab_size = len(tj["model"]["vocab"])
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        max_position_embeddings=arch.max_position_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    # Zero output rows for everything but the words: greedy decoding then only ever emits words,
    # so every generated token streams as one non-empty text chunk.
    first_word = tj["model"]["vocab"][SPACE + words()[0]]
    with torch.no_grad():
        model.lm_head.weight[:first_word] = 0
    # eos_token_id -1: generation never stops early, so max_tokens fixes the output length.
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=-1, do_sample=False, max_new_tokens=4096
    )
    model.save_pretrained(out)
    (out / "tokenizer.json").write_text(json.dumps(tj))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
                "model_max_length": arch.max_position_embeddings,
            }
        )
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    )
    (out / "words.txt").write_text("\n".join(words()) + "\n")
    return out


# ---- servers ---------------------------------------------------------------------------------
def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_thread_env() -> dict[str, str]:
    """The environment for an engine with one compute thread, offline."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


def pinned(cmd: list[str], core: int) -> list[str]:
    """`cmd` pinned to one CPU core with taskset (unchanged if taskset is missing)."""
    return ["taskset", "-c", str(core), *cmd] if shutil.which("taskset") else cmd


@dataclass
class Server:
    """A running engine process."""

    name: str
    url: str
    model: str  # the model name requests must carry
    proc: subprocess.Popen
    log_path: Path
    version: str

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 10 s) and wait for it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 180.0) -> None:
    """Wait until GET url answers 200; fail early if the process exits."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server at {url} not ready after {timeout_s:.0f} s")


@dataclass(frozen=True)
class HfSettings:
    """transformers serve --continuous-batching settings (its --cb-* flags)."""

    block_size: int = 64  # KV page, tokens
    num_blocks: int = 2048  # enough that nothing is ever evicted in these runs
    max_batch_tokens: int = 256  # token budget per iteration


def transformers_version() -> str:
    """The installed transformers version."""
    import transformers

    return str(transformers.__version__)


def launch(
    cmd: list[str], port: int, log: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """Start a server process logging to `log` and wait until 127.0.0.1:`port`/health answers;
    the process is killed if it never does."""
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc, log)
    except BaseException:
        proc.kill()
        raise
    return proc, url


def start_hf(model_dir: Path, hf: HfSettings, core: int = 0, log_dir: Path | None = None) -> Server:
    """Start `transformers serve --continuous-batching` on 127.0.0.1, pinned to `core`."""
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    cmd = [
        str(exe),
        "serve",
        str(model_dir),
        "--continuous-batching",
        "--device",
        "cpu",
        "--dtype",
        "bfloat16",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--cb-block-size",
        str(hf.block_size),
        "--cb-num-blocks",
        str(hf.num_blocks),
        "--cb-max-batch-tokens",
        str(hf.max_batch_tokens),
        "--log-level",
        "warning",
    ]
    log = (log_dir or model_dir) / f"hf_serve_{port}.log"
    proc, url = launch(pinned(cmd, core), port, log, env=one_thread_env())
    return Server("hf", url, str(model_dir), proc, log, f"transformers {transformers_version()}")


def _busy_jiffies(cores: list[int] | None = None) -> float:
    """Busy jiffies of the given cores (all cores when None), from /proc/stat."""
    total = 0.0
    names = {"cpu"} if cores is None else {f"cpu{c}" for c in cores}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name in names:
            v = [float(x) for x in vals]
            total += sum(v) - v[3] - (v[4] if len(v) > 4 else 0.0)
    return total


def cpu_busy_fraction(seconds: float = 1.0, cores: list[int] | None = None) -> float:
    """Share of the given cores' time (all cores when None) spent busy over `seconds`."""
    n = len(cores) if cores is not None else (os.cpu_count() or 1)
    hz = os.sysconf("SC_CLK_TCK")
    b0, t0 = _busy_jiffies(cores), time.monotonic()
    time.sleep(seconds)
    return (_busy_jiffies(cores) - b0) / hz / max(1e-9, (time.monotonic() - t0) * n)


def _proc_jiffies(pid: int) -> float:
    """CPU jiffies of a process and its threads (utime + stime); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return float(fields[11]) + float(fields[12])


class ForeignLoad:
    """CPU time that processes other than `pids` (pinned to `cores`) took on those cores while
    the block ran, as a share of them: a benchmark on a shared machine is only as good as this
    is small."""

    def __init__(self, pids: list[int], cores: list[int]) -> None:
        self.pids = pids
        self.cores = cores
        self.share = 0.0

    def __enter__(self) -> ForeignLoad:
        self.t0 = time.monotonic()
        self.busy0 = _busy_jiffies(self.cores)
        self.own0 = sum(_proc_jiffies(p) for p in self.pids)
        return self

    def __exit__(self, *exc: object) -> None:
        hz = os.sysconf("SC_CLK_TCK")
        own = sum(_proc_jiffies(p) for p in self.pids) - self.own0
        foreign = max(0.0, _busy_jiffies(self.cores) - self.busy0 - own) / hz
        self.share = foreign / max(1e-9, (time.monotonic() - self.t0) * len(self.cores))


def wait_idle(
    limit: float = 0.1, max_wait_s: float = 900.0, say=print, cores: list[int] | None = None
) -> float:
    """Wait until `cores` (all when None) are idle: busy share over 3 s below `limit`."""
    end = time.monotonic() + max_wait_s
    while True:
        busy = cpu_busy_fraction(3.0, cores)
        if busy <= limit:
            return busy
        if time.monotonic() > end:
            say(f"cores still {busy:.0%} busy after {max_wait_s:.0f} s; measuring anyway")
            return busy
        say(f"machine {busy:.0%} busy; waiting for it to be idle")
        time.sleep(10.0)


# ---- llama.cpp -------------------------------------------------------------------------------
def llama_cpp_dir() -> Path:
    """The llama.cpp sources vendored in the llama-cpp-python sdist (unpacked in BUILD_DIR)."""
    return BUILD_DIR / f"llama_cpp_python-{LLAMA_CPP_VERSION}" / "vendor" / "llama.cpp"


def build_llama_cpp(say=print) -> Path:
    """Download the llama-cpp-python sdist from PyPI and build llama-server and
    llama-batched-bench with cmake (CPU only, no web UI, no OpenSSL); returns the bin folder."""
    src = llama_cpp_dir()
    bindir = src / "build" / "bin"
    if (bindir / "llama-server").is_file() and (bindir / "llama-batched-bench").is_file():
        return bindir
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    if not src.is_dir():
        say(f"downloading llama-cpp-python {LLAMA_CPP_VERSION} sdist")
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"),
                *(f"llama-cpp-python=={LLAMA_CPP_VERSION}", "-d", str(BUILD_DIR)),
            ],
            check=True,
        )
        sdist = BUILD_DIR / f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
        subprocess.run(["tar", "xzf", str(sdist), "-C", str(BUILD_DIR)], check=True)
    say("building llama-server (cmake, a few minutes on 2 cores)")
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF"]
    flags += ["-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
    subprocess.run(["cmake", "-B", "build", *flags], cwd=src, check=True)
    subprocess.run(
        ["cmake", "--build", "build", "-j2", "--target", "llama-server", "llama-batched-bench"],
        cwd=src,
        check=True,
    )
    return bindir


def llama_cpp_commit() -> str:
    """The llama.cpp commit the sdist vendors (from its build info)."""
    out = subprocess.run(
        [str(llama_cpp_dir() / "build" / "bin" / "llama-server"), "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    text = out.stdout + out.stderr
    for line in text.splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def to_gguf(model_dir: Path) -> Path:
    """Convert the checkpoint to a bf16 GGUF with llama.cpp's own converter."""
    out = model_dir / "model-bf16.gguf"
    if out.is_file():
        return out
    src = llama_cpp_dir()
    env = dict(os.environ, PYTHONPATH=str(src / "gguf-py"))
    subprocess.run(
        [
            *(sys.executable, str(src / "convert_hf_to_gguf.py"), str(model_dir)),
            *("--outfile", str(out), "--outtype", "bf16"),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    return out


@dataclass(frozen=True)
class LlamaSettings:
    """llama-server settings: slots, token budget per iteration, KV per slot."""

    parallel: int = 8  # slots: sequences decoded together at most
    batch: int = 256  # -b and -ub: tokens per iteration (one forward pass)
    ctx_per_slot: int = 2048


def start_llama(gguf: Path, s: LlamaSettings, core: int = 0, log_dir: Path | None = None) -> Server:
    """Start llama-server on 127.0.0.1 with one thread, pinned to `core`."""
    port = free_port()
    exe = llama_cpp_dir() / "build" / "bin" / "llama-server"
    cmd = [str(exe), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["-t", "1", "-tb", "1", "-np", str(s.parallel), "-c", str(s.parallel * s.ctx_per_slot)]
    cmd += ["--no-kv-unified", "-b", str(s.batch), "-ub", str(s.batch), "--no-cache-prompt"]
    cmd += ["--no-webui", "--poll", "0", "--alias", "model"]
    log = (log_dir or gguf.parent) / f"llama_server_{port}.log"
    proc, url = launch(pinned(cmd, core), port, log)
    version = f"llama.cpp {llama_cpp_commit()} (llama-cpp-python {LLAMA_CPP_VERSION} sdist)"
    return Server("llama.cpp", url, "model", proc, log, version)


def batched_bench(
    gguf: Path, s: LlamaSettings, out: Path, core: int = 0, prompts=(16, 64, 128, 256)
) -> Path:
    """Time llama.cpp's forward passes with llama-batched-bench (prompt processing and decode
    steps of 1..parallel sequences over several prompt lengths); writes its JSONL rows."""
    exe = llama_cpp_dir() / "build" / "bin" / "llama-batched-bench"
    npl = ",".join(str(b) for b in (1, 2, 4, 8, 16) if b <= s.parallel)
    cmd = [str(exe), "-m", str(gguf), "-t", "1", "-tb", "1", "--no-kv-unified"]
    cmd += ["-c", str(s.parallel * s.ctx_per_slot), "-b", str(s.batch), "-ub", str(s.batch)]
    cmd += ["-npp", ",".join(map(str, prompts)), "-ntg", "32", "-npl", npl]
    cmd += ["--output-format", "jsonl"]
    res = subprocess.run(pinned(cmd, core), capture_output=True, text=True, check=True)
    rows = [line for line in res.stdout.splitlines() if line.startswith("{")]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(rows) + "\n")
    return out

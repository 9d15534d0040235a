"""The load generator against a local server that misbehaves on purpose: every case accounted."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pytest

pytest.importorskip("aiohttp")

from fakeserver import BOS, MODES, SLOW_FIRST_S, TOKEN_GAP_S, FakeServer

from servesim.cli import measure as cli_measure
from servesim.errors import ServesimError
from servesim.measure import bench, compare
from servesim.sim.metrics import read_parquet, write_parquet
from servesim.sim.synthetic import ClosedLoop
from servesim.sim.workload import Workload

MODE_WORDS = {mode: words for words, mode in MODES.items()}


@pytest.fixture(scope="module")
def server():
    s = FakeServer().start()
    yield s
    s.stop()


def _target(s: FakeServer) -> bench.Target:
    return bench.Target(s.url, "fake", engine="vllm")


def _prompts() -> bench.WordPrompts:
    return bench.WordPrompts(["aa", "bb", "cc"], offset=BOS)


def _work(modes: list[str], out: int = 8, gap_s: float = 0.01) -> Workload:
    # A prompt of N words plus the server's BOS is N + BOS tokens.
    words = [MODE_WORDS.get(m, 10) for m in modes]
    return Workload(np.arange(len(modes)) * gap_s, np.array(words) + BOS, np.full(len(modes), out))


def test_every_misbehaviour_ends_with_its_status(server):
    modes = ["ok", "ok", "slow_first", "drop", "http500", "truncate", "hang", "bad_json"]
    modes.append("no_usage")
    t0 = time.perf_counter()
    res = bench.run(_target(server), _work(modes), _prompts(), timeout_s=1.0, deadline_s=20)
    wall = time.perf_counter() - t0
    status = [r.status for r in res.records]
    assert status == [
        "ok",
        "ok",
        "ok",
        "dropped",
        "http_5xx",
        "truncated",
        "timeout",
        "dropped",
        "ok",
    ]
    counts = res.status_counts()
    assert sum(counts.values()) == len(modes)
    assert counts["ok"] == 4 and res.summary()["errors"] == 5
    recs = res.records
    assert recs[4].http_status == 500 and "500" in recs[4].error
    assert recs[5].generated == 4 and "4 tokens generated, 8 requested" in recs[5].error
    assert len(recs[3].token_times_s) == 3  # three tokens arrived before the drop
    assert "malformed" in recs[7].error
    assert recs[8].generated == 8 and recs[8].server_prompt_tokens == -1  # counted, no usage
    # The hanging request is cut at its 1 s timeout; nothing waits for it longer.
    assert recs[6].end_s - recs[6].send_s == pytest.approx(1.0, abs=0.2)
    assert wall < 2.5
    # The slow first token shows in TTFT, the server's pacing in TPOT.
    cols = res.columns()
    assert cols["ttft_s"][2] >= SLOW_FIRST_S
    assert cols["ttft_s"][0] < SLOW_FIRST_S / 3
    # The server sleeps TOKEN_GAP_S between tokens; the client clock may see a gap a few µs
    # shorter (the sleep and the two timestamps are not one clock read).
    assert 0.95 * TOKEN_GAP_S <= cols["tpot_s"][0] < 4 * TOKEN_GAP_S
    # Failed requests keep their row with NaN latencies (E2E), finished ones have all of them.
    assert np.isnan(cols["e2e_s"][[3, 4, 5, 6, 7]]).all()
    assert np.isfinite(cols["e2e_s"][[0, 1, 2, 8]]).all()
    # Prompts had exactly the requested length as the server counted it (BOS included).
    ok = cols["server_prompt_tokens"] >= 0
    assert (cols["server_prompt_tokens"][ok] == cols["prompt_tokens"][ok]).all()


def test_refused_connection_is_counted_not_raised():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nobody listens
    t = bench.Target(f"http://127.0.0.1:{port}", "fake")
    res = bench.run(t, _work(["ok"] * 3), _prompts(), timeout_s=2, deadline_s=10)
    assert res.status_counts()["refused"] == 3


def test_deadline_stops_the_run_and_marks_what_was_never_sent(server):
    # Arrivals every 0.5 s for 10 s, one request hangs: a 1.2 s deadline ends it all.
    modes = ["hang"] + ["ok"] * 19
    t0 = time.perf_counter()
    res = bench.run(
        _target(server), _work(modes, gap_s=0.5), _prompts(), timeout_s=30, deadline_s=1.2
    )
    wall = time.perf_counter() - t0
    assert wall < 2.5
    counts = res.status_counts()
    # Sent: the hanging one (0 s), 0.5 s and 1.0 s; the 17 from 1.5 s on never were.
    assert counts["timeout"] == 1 and counts["ok"] == 2 and counts["not_sent"] == 17
    assert sum(counts.values()) == 20
    assert "deadline" in res.records[0].error


def test_concurrency_is_bounded(server):
    server.max_in_flight = 0
    work = Workload(np.zeros(12), np.full(12, 10 + BOS), np.full(12, 20))
    res = bench.run(_target(server), work, _prompts(), max_concurrency=3, deadline_s=20)
    assert res.status_counts()["ok"] == 12
    assert server.max_in_flight == 3
    # Requests that waited for a slot count that wait in their TTFT (arrival is the schedule).
    ttft = np.sort(res.columns()["ttft_s"])
    assert ttft[-1] > 3 * ttft[0]


def test_closed_loop_keeps_n_clients_busy(server):
    server.max_in_flight = 0
    loop = ClosedLoop(2, 6, f"fixed:{10 + BOS}", "fixed:5", seed=1)
    res = bench.run(_target(server), loop, _prompts(), deadline_s=20)
    assert res.status_counts()["ok"] == 6
    assert server.max_in_flight == 2
    cols = res.columns()
    assert np.all(cols["arrival_s"] <= cols["send_s"])
    assert np.all(cols["send_s"] - cols["arrival_s"] < 0.05)


def test_chat_endpoint_counts_delta_content(server):
    t = bench.Target(server.url, "fake", engine="vllm", chat=True)
    assert t.endpoint.endswith("/v1/chat/completions")
    res = bench.run(t, _work(["ok", "ok"], out=5), _prompts(), deadline_s=20)
    assert [r.status for r in res.records] == ["ok", "ok"]
    assert [r.counted for r in res.records] == [5, 5]
    assert server.bodies[-1]["messages"][0]["role"] == "user"


def test_output_fields_force_length_per_engine():
    assert bench.output_fields("vllm", 7) == {
        "max_tokens": 7,
        "min_tokens": 7,
        "ignore_eos": True,
        "temperature": 0,
    }
    llama = bench.output_fields("llama.cpp", 7)
    assert llama["n_predict"] == 7 and llama["ignore_eos"] is True
    hf = bench.output_fields("hf", 7)
    assert set(hf) == {"max_tokens", "generation_config"}  # serve refuses unknown fields
    assert json.loads(hf["generation_config"])["eos_token_id"] == -1
    with pytest.raises(ServesimError, match="Unknown engine"):
        bench.output_fields("tgi", 7)


def test_probe_measures_tokens_the_server_adds(server):
    p = bench.WordPrompts(["aa"])
    assert bench.probe_prompt_offset(_target(server), p) == BOS


def test_word_and_tokenizer_prompts_have_exact_lengths(tmp_path):
    rng = np.random.default_rng(0)
    w = bench.WordPrompts(["aa", "bb"], offset=1)
    assert len(w.build(50, rng).split()) == 49
    words = tmp_path / "words.txt"  # saved with a byte-order mark: the first word stays "aa"
    words.write_bytes(b"\xef\xbb\xbfaa\r\nbb\r\n")
    assert bench.WordPrompts.from_file(words).words == ["aa", "bb"]
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(200)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece()
    tok.save(str(tmp_path / "tokenizer.json"))
    tp = bench.TokenizerPrompts(str(tmp_path))
    for n in (1, 7, 100):
        assert tp.count(tp.build(n, rng)) == n
    assert len(bench.TokenIdPrompts(1000, offset=2).build(30, rng)) == 28


def test_parquet_keeps_every_request_and_compares(server, tmp_path):
    res = bench.run(_target(server), _work(["ok", "http500", "ok"]), _prompts(), deadline_s=20)
    cols = res.columns()
    write_parquet(cols, tmp_path / "run" / "requests.parquet")
    back = read_parquet(tmp_path / "run" / "requests.parquet")
    assert len(back["status"]) == 3 and list(back["status"]) == ["ok", "http_5xx", "ok"]
    assert [len(t) for t in back["token_times_s"]] == [8, 0, 8]
    run = compare.load_run(tmp_path / "run")
    gaps = run.itl_gaps_s()
    assert len(gaps) == 14 and np.all(gaps >= 0)
    s = res.summary()
    assert s["finished"] == 2 and s["requests"] == 3 and s["statuses"]["http_5xx"] == 1


def test_cli_bench_writes_the_simulate_schema(server, tmp_path):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli_measure.add_parsers(sub)
    words = tmp_path / "words.txt"
    words.write_text("aa\nbb\n")
    out = tmp_path / "b"
    args = parser.parse_args(
        [
            *("bench", "--url", server.url, "--model", "fake", "--words", str(words)),
            *("--prompt", "fixed:20", "--output", "fixed:6", "--rate", "50"),
            *("--num-requests", "5", "--out", str(out), "--no-progress"),
        ]
    )
    assert cli_measure.COMMANDS[args.command](args) == 0
    cols = read_parquet(out / "requests.parquet")
    for name in ("arrival_s", "first_token_s", "finish_s", "ttft_s", "tpot_s", "e2e_s"):
        assert name in cols
    assert (cols["server_prompt_tokens"] == 20).all() and (cols["generated_tokens"] == 6).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] == 5 and summary["statuses"]["ok"] == 5
    with pytest.raises(ServesimError, match="exactly one of"):
        cli_measure.COMMANDS["bench"](
            parser.parse_args(["bench", "--url", server.url, "--model", "fake"])
        )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bench(url: str, tmp_path, *extra: str) -> list[str]:
    words = tmp_path / "words.txt"
    words.write_text("aa\nbb\n")
    return [
        *("bench", "--url", url, "--model", "fake", "--words", str(words), "--no-progress"),
        *("--prompt", "fixed:20", "--output", "fixed:6", "--rate", "50", "--num-requests", "3"),
        *("--prompt-offset", str(BOS), "--timeout", "2", "--out", str(tmp_path / "b"), *extra),
    ]


def test_bench_exits_1_with_one_sentence_when_every_request_failed(tmp_path, capsys):
    """Nothing listens on the port: every request fails, the outputs are still written, and
    the exit status is 1 with one sentence saying so (not 0, not a bad-input 2)."""
    from servesim.cli.main import main

    code = main(_bench(f"http://127.0.0.1:{_free_port()}", tmp_path))
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "every one of the 3 requests failed" in err
    cols = read_parquet(tmp_path / "b" / "requests.parquet")
    assert len(cols["status"]) == 3 and "ok" not in set(cols["status"])


def test_bench_summary_shows_only_what_a_measurement_knows(server, tmp_path, capsys):
    """A measured run prints latencies, throughput and SLO attainment, and no simulator-only
    rows (batch size, KV-cache use, preemptions, devices, energy, queueing) as zeros."""
    from servesim.cli.main import main

    assert main(_bench(server.url, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "TTFT" in out and "SLO attainment" in out and "requests finished" in out
    for row in ("mean batch size", "KV-cache use", "preemptions", "energy", "queueing", "$ per"):
        assert row not in out, row


def test_a_prompt_pool_sends_its_entries_again(server):
    """`bench --prompt-pool 2` was accepted but every request got its own prompt, while the
    simulation of the same flags repeats two (and its prefix cache serves the repeats). Each
    entry's text now goes out again whenever the pool picks it."""
    server.max_in_flight = 0
    for pool, distinct in ((2, 2), (0, 10)):
        server.bodies.clear()
        loop = ClosedLoop(2, 10, f"fixed:{10 + BOS}", "fixed:3", seed=1, dataset_entries=pool)
        res = bench.run(_target(server), loop, _prompts(), deadline_s=20)
        assert res.status_counts()["ok"] == 10
        sent = [b.get("prompt") or b["messages"][-1]["content"] for b in server.bodies]
        assert len(sent) == 10 and len(set(sent)) == distinct

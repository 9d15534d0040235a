"""Fuzz the command line: random flags with random values, each run in process, checked for
the CLI's promise (src/servesim/cli/main.py): exit 0, 1 or 2, bad input said in one line on
stderr, never a traceback or an exception escaping `main`.

    .venv/bin/python scripts/cli_fuzz.py --cases 3000 [--seed 0] [--start 0] [--limit-s 20]

Case i draws from random.Random(f"{seed}:{i}"): a command, its required flags, then one to four
of its options with values from pools of plausible and implausible ones (numbers, NaN, negative,
empty, names of devices and models that exist and do not, missing files). `--start i --cases 1`
replays it. `bench`, `profile`, `compare` and `fewshot` need an endpoint, a model run here or
files, and `plan` searches 266 candidates per case (about two minutes on one core: give it
`--limit-s 180`): they run only when named in `--commands`. A case still running after
`--limit-s` is counted as slow and printed (a plan or a `profile` run here may be legitimately
long; a hang would show up here). Failures print the command line. Cases run in a scratch
directory of their own, removed afterwards, so what they write (`--out`, plan-out/) never lands
where the fuzzer was started and a missing input file is missing. The last line is one JSON object:
{"cases": N, "failures": F, "slow": S, "exit_codes": {...}}.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import random
import shlex
import signal
import sys
import tempfile
import traceback
from typing import Any

from servesim.cli import main as cli
from servesim.errors import ServesimError, at_least, script_exit

# Commands that need more than flags (an endpoint, a real model run here, input files) or run
# long: left out unless named.
NOT_BY_DEFAULT = frozenset({"bench", "profile", "compare", "fewshot", "plan"})
NUMBERS = ("0", "1", "2", "3", "8", "64", "4096", "-1", "0.5", "1e-9", "1e9", "nan", "inf")
NUMBERS += ("-inf", "abc", "", "1,2", "x:y", "0.0")
GOOD_INTS = ("1", "2", "4", "8", "16")
GOOD_FLOATS = ("0.05", "0.5", "1", "2", "10")
DEVICES = ("h100_sxm", "b200_sxm", "a100_sxm", "l40s", "gb200", "mi300x", "no_such_gpu")
MODELS = ("meta-llama/Llama-3.1-8B", "Qwen/Qwen3-8B", "deepseek-ai/DeepSeek-R1", "no/such-model")
MODELS += ("Qwen/Qwen3.5-397B-A17B", "openai/gpt-oss-20b", "nvidia/Nemotron-H-56B-Base-8K")
# Relative paths resolve in the case's own empty directory, so "missing/file.yaml" is missing
# when the case starts and what a case writes stays there; no other absolute path, since a
# case may create the folders of an output path it is given.
PATHS = ("missing/file.yaml", "out", "/dev/null", "azure_conv")
PATH_DESTS = frozenset({"config", "trace", "out", "measured", "fit", "devices", "workflows"})
PATH_DESTS |= {"tables", "shots", "vidur"}
# Flags that make a case small enough to run in a second or two.
BASE = {
    "simulate": [
        *("--model", "meta-llama/Llama-3.1-8B", "--device", "h100_sxm"),
        *("--num-requests", "20"),
    ],
    "predict": ["--model", "meta-llama/Llama-3.1-8B", "--device", "h100_sxm"],
    "plan": ["--model", "meta-llama/Llama-3.1-8B", "--num-requests", "20"],
    "split": ["--model", "meta-llama/Llama-3.1-8B"],
}


class Slow(Exception):
    """A case ran past its wall-clock limit."""


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """The CLI's subcommand parsers, by name."""
    for action in cli._parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def value_for(action: argparse.Action, rng: random.Random) -> str:
    """A value for an option: one of its choices (or a wrong one), else by what it names."""
    if action.choices:
        return str(rng.choice([*action.choices, "bogus"]))
    dest = action.dest
    if "device" in dest and dest not in PATH_DESTS:
        return rng.choice(DEVICES)
    if "model" in dest:
        return rng.choice(MODELS)
    if dest in PATH_DESTS:
        return rng.choice(PATHS)
    if action.type in (int, float) and rng.random() < 0.7:  # mostly a value it may accept
        return rng.choice(GOOD_INTS if action.type is int else GOOD_FLOATS)
    return rng.choice(NUMBERS)


def draw(rng: random.Random, commands: list[str], parsers: dict[str, Any]) -> list[str]:
    """One command line: a command, its base flags and one to four random options."""
    command = rng.choice(commands)
    argv = [command, *BASE.get(command, [])]
    options = [a for a in parsers[command]._actions if a.option_strings and a.dest != "help"]
    for action in rng.sample(options, min(len(options), rng.randint(1, 4))):
        flag = next((s for s in action.option_strings if s.startswith("--")), None)
        flag = flag or action.option_strings[0]
        argv += [flag] if action.nargs == 0 else [flag, value_for(action, rng)]
    return argv


def run(argv: list[str], limit_s: float) -> tuple[int, str]:
    """Run the CLI on `argv` in process; returns (exit status, stderr). Raises `Slow` past the
    limit and lets any exception that escapes `main` through."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise Slow

    err = io.StringIO()
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                status = cli.main(argv)
            except SystemExit as exc:  # argparse's --help
                status = exc.code if isinstance(exc.code, int) else 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return status, err.getvalue()


def problem(status: int, stderr: str) -> str | None:
    """What breaks the CLI's promise in one run's outcome, or None."""
    if status not in (0, 1, 2):
        return f"exit status {status}"
    if "Traceback" in stderr:
        return "a traceback on stderr"
    if status == 2 and len(stderr.strip().splitlines()) != 1:
        return "bad input not said in one line"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", type=int, default=300, help="how many command lines to try")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="index of the first case")
    ap.add_argument("--limit-s", type=float, default=20.0, help="wall-clock limit per case")
    ap.add_argument("--commands", help="comma-separated commands (default: all but bench, ...)")
    args = ap.parse_args(argv)
    cases, start = at_least(args.cases, "--cases"), at_least(args.start, "--start", 0)
    if not args.limit_s > 0:
        raise ServesimError(f"--limit-s must be a positive number of seconds, not {args.limit_s}.")
    parsers = subcommands()
    commands = [c for c in parsers if c not in NOT_BY_DEFAULT]
    if args.commands:
        commands = args.commands.split(",")
        unknown = sorted(set(commands) - set(parsers))
        if unknown:
            raise ServesimError(
                f"--commands names {', '.join(unknown)}, not a servesim command; pick from "
                f"{', '.join(sorted(parsers))}."
            )
    outcomes: collections.Counter[str] = collections.Counter()
    codes: collections.Counter[str] = collections.Counter()
    home = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="servesim-cli-fuzz-") as scratch:
        try:
            for i in range(start, start + cases):
                here = os.path.join(scratch, str(i))
                os.mkdir(here)
                os.chdir(here)  # what the case writes (--out, servesim-out/) lands here
                line = draw(random.Random(f"{args.seed}:{i}"), commands, parsers)
                outcomes[one_case(i, line, args.limit_s, codes)] += 1
        finally:
            os.chdir(home)
    failures, slow = outcomes["fail"], outcomes["slow"]
    summary = {"cases": cases, "failures": failures, "slow": slow, "exit_codes": dict(codes)}
    print(json.dumps(summary, sort_keys=True))
    return 1 if failures else 0


def one_case(i: int, line: list[str], limit_s: float, codes: collections.Counter[str]) -> str:
    """Run case i's command line; prints what went wrong; returns "ok", "slow" or "fail" and
    counts the exit status in `codes`."""
    shown = "servesim " + shlex.join(line)
    try:
        status, stderr = run(line, limit_s)
    except Slow:
        print(f"SLOW case {i}: {shown}", flush=True)
        return "slow"
    except Exception:
        print(f"FAIL case {i}: {shown}: an exception escaped main", flush=True)
        traceback.print_exc(limit=4, file=sys.stdout)
        return "fail"
    codes[str(status)] += 1
    why = problem(status, stderr)
    if why is not None:
        print(f"FAIL case {i}: {shown}: {why}\n  {stderr.strip()[-400:]}", flush=True)
        return "fail"
    return "ok"


if __name__ == "__main__":
    sys.exit(script_exit(main))

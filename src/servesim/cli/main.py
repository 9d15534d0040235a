"""Command line: `servesim simulate | predict | plan | calibrate | bench | compare | profile |
fewshot | devices | models | split | choose`.

Each command reads its settings from flags and, with `--config FILE`, from a YAML/JSON file with
the same names, validated by the command's pydantic model (flags win over the file, the file over
the defaults). Exit status: 0 done; 1 the command ran but has no answer (`plan`: no candidate
meets the SLO; `bench`: every request failed), its outputs still written; 2 bad input, said in
one sentence on stderr, never a traceback, with nothing of the user's overwritten; 70 a
simulation lost a request (a servesim bug, reported with the request ids); 130 interrupted.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from servesim.cli import measure as cli_measure
from servesim.cli import plan as cli_plan
from servesim.cli.calibrate import add_calibrate_parser, cmd_calibrate
from servesim.cli.catalog import add_catalog_parsers, cmd_devices, cmd_models
from servesim.cli.choose import add_choose_parser, cmd_choose
from servesim.cli.predict import add_predict_parser, cmd_predict
from servesim.cli.simulate import add_simulate_parser, cmd_simulate
from servesim.cli.split import add_split_parser, cmd_split
from servesim.errors import ServesimError
from servesim.sim.metrics import ConservationError


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ServesimError sentence (exit 2), like every other
    bad input."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        m = re.match(r"argument (\S+?)(?:/\S+)?: invalid (int|float) value: (.*)", message)
        if m:
            kind = "a whole number" if m.group(2) == "int" else "a number"
            raise ServesimError(f"{m.group(1)} must be {kind}, got {m.group(3)}.")
        raise ServesimError(f"{message[:1].upper()}{message[1:]}; see `{self.prog} --help`.")


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="servesim",
        description="Predict, simulate and plan LLM serving against latency SLOs.",
        epilog="Exit status: 0 done; 1 ran but no answer (plan: nothing meets the SLO; bench: "
        "every request failed); 2 bad input; 70 internal error; 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_simulate_parser(sub)
    add_predict_parser(sub)
    add_calibrate_parser(sub)
    cli_plan.add_parser(sub)
    cli_measure.add_parsers(sub)
    add_catalog_parsers(sub)
    add_split_parser(sub)
    add_choose_parser(sub)
    return parser


COMMANDS = {
    "simulate": cmd_simulate,
    "predict": cmd_predict,
    "calibrate": cmd_calibrate,
    "devices": cmd_devices,
    "models": cmd_models,
    "plan": cli_plan.cmd_plan,
    "split": cmd_split,
    "choose": cmd_choose,
    **cli_measure.COMMANDS,
}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn bad input into one line and exit code 2."""
    err = Console(stderr=True, soft_wrap=True, emoji=False)
    try:
        args, extra = _parser().parse_known_args(argv)
        if extra:
            raise ServesimError(
                f"servesim {args.command} does not take {' '.join(extra)}; see `servesim "
                f"{args.command} --help`."
            )
        return COMMANDS[args.command](args)
    except ServesimError as exc:
        err.print(f"[red]error:[/red] {escape(_one_line(str(exc)))}", highlight=False)
        return 2
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        err.print(
            f"[red]error:[/red] {escape(_one_line(exc.strerror or str(exc)))}{escape(where)}; "
            "check the path, "
            "its permissions and the free space.",
            highlight=False,
        )
        return 2
    except MemoryError:
        err.print(
            "[red]error:[/red] this machine ran out of memory for what was asked; ask for less "
            "(fewer requests, a smaller batch or a smaller model).",
            highlight=False,
        )
        return 2
    except ConservationError as exc:
        # A simulator bug, not the user's input: say so, and name the requests (EX_SOFTWARE).
        err.print(
            f"[red]internal error:[/red] {escape(_one_line(str(exc)))}; please report it with "
            "the command that produced it.",
            highlight=False,
        )
        return 70
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())

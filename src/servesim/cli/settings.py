"""Run settings: flags and YAML/JSON files, validated by one pydantic model per command.

Every long flag `--max-num-seqs` has a file key `max_num_seqs` (dashes or underscores). Flags the
user typed win over the file; the file wins over the model's defaults. `settings(Model, args)`
validates the merge and turns the first problem into one ServesimError sentence that names the
setting as the user wrote it (`--max-num-seqs`, or `max_num_seqs in "run.yaml"`) and the fix:
wrong types (`tp: 2.5`, `chunked_prefill: "no"`), ranges (`--seed -1`, nan or inf anywhere),
unknown keys, and flags that do nothing in the mode the others choose.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import string
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from servesim.errors import ServesimError

# ---- value types shared by the command models ------------------------------------------------
PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]
NonEmpty = Annotated[str, Field(min_length=1)]
# What prices kernels (see predictor.measured_kernels).
LatencyModel = Literal["auto", "measured", "roofline"]


def _text_or_number(v: Any) -> Any:
    """A length spec may be written as a bare number in a file (`prompt: 1024`)."""
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


LengthSpec = Annotated[str, Field(min_length=1), BeforeValidator(_text_or_number)]


def _comma_list(v: Any) -> Any:
    """`a,b,c` (a flag), a YAML list, or a single value → a tuple of stripped strings."""
    if isinstance(v, str):
        return tuple(x.strip() for x in v.split(",") if x.strip())
    if isinstance(v, int | float) and not isinstance(v, bool):
        return (str(v),)
    if isinstance(v, list | tuple):
        return tuple(str(x).strip() for x in v if str(x).strip())
    return v


def _int_list(v: Any) -> Any:
    """`1,2,4`, 4 or [1, 2, 4] → a tuple of integers (ValueError for anything else)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v,)
    items = _comma_list(v) if isinstance(v, str) else v
    if not isinstance(items, list | tuple):
        raise ValueError(f"takes whole numbers like 1,2,4, got {v!r}")
    out = []
    for x in items:
        if isinstance(x, str):
            try:
                x = int(x)
            except ValueError:
                raise ValueError(f"takes whole numbers like 1,2,4, got {x!r}") from None
        out.append(x)
    return tuple(out)


Names = Annotated[tuple[str, ...], BeforeValidator(_comma_list)]
PosInts = Annotated[tuple[PosInt, ...], BeforeValidator(_int_list)]
Edges = tuple[Annotated[float, AllowInfNan(True)], ...]


class Misuse(ServesimError):
    """Settings that contradict each other or do nothing together. The message is a template:
    `{key}` becomes the setting as the user wrote it (`--prefill-tp`, `prefill_tp in "x.yaml"`).
    """

    def __init__(self, template: str) -> None:
        super().__init__(template)
        self.template = template

    def __str__(self) -> str:
        return spell_template(self.template, flag)


def flag(key: str) -> str:
    """The command-line spelling of a setting."""
    return "--" + key.replace("_", "-")


def spell_template(template: str, spell: Any) -> str:
    """Fill `{key}` placeholders with `spell(key)`."""
    keys = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    return template.format(**{k: spell(k) for k in keys})


class Settings(BaseModel):
    """Base of every command's settings: strict types (no `2.5` → 2, no `"no"` → False), finite
    numbers, no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, defer_build=True)
    # Positional arguments, spelled in errors by what they are rather than as --flags.
    POSITIONAL: ClassVar[dict[str, str]] = {}

    _file: str | None = PrivateAttr(default=None)
    _from_file: frozenset[str] = PrivateAttr(default=frozenset())

    def given(self, key: str) -> bool:
        """Whether the user set `key` (a flag or a file key) to something other than off/None."""
        value = getattr(self, key)
        return key in self.model_fields_set and value is not None and value is not False

    def spell(self, key: str) -> str:
        """`--max-num-seqs` for a flag or a default, `max_num_seqs in "run.yaml"` for a file key."""
        if key in self._from_file:
            return f'{key} in "{self._file}"'
        return self.POSITIONAL.get(key) or flag(key)


S = TypeVar("S", bound=Settings)


class WorkloadSettings(Settings):
    """The workload `simulate` and `bench` run: a trace, a synthetic mix or a closed loop."""

    trace: NonEmpty | None = None
    rate: PosFloat | None = None
    num_requests: PosInt | None = None
    prompt: LengthSpec | None = None
    output: LengthSpec | None = None
    arrival: Literal["poisson", "gamma"] = "poisson"
    cv: PosFloat = 1.0
    clients: PosInt | None = None
    think_s: NonNegFloat = 0.0
    # The benchmark client a closed loop mirrors (servesim.sim.clients presets).
    client_protocol: (
        Literal[
            "vllm_bench_serve",
            "inferencex",
            "inferencex_multinode",
            "inferencex_2025",
            "aiperf",
            "lockstep",
        ]
        | None
    ) = None
    length_range_ratio: NonNegFloat | None = None
    ramp_s: NonNegFloat = 0.0
    warmup_requests: NonNegInt | None = None
    # Distinct prompts the closed loop's clients cycle through (aiperf --num-dataset-entries).
    prompt_pool: PosInt | None = None
    prompt_pool_sampling: Literal["shuffle", "random", "sequential"] = "shuffle"
    seed: NonNegInt = 0

    @model_validator(mode="after")
    def _workload_mode(self) -> WorkloadSettings:
        check_workload_mode(self, closed_loops=True)
        return self


def check_workload_mode(s: Settings, closed_loops: bool) -> None:
    """Refuse workload settings that do nothing in the mode the others choose (a trace, a
    synthetic mix, or a closed loop)."""
    given = s.given
    synthetic = given("prompt") or given("output")
    if closed_loops and given("clients"):
        for key in ("rate", "arrival", "cv"):
            if given(key):
                raise Misuse(
                    f"{{{key}}} does nothing in a closed loop ({{clients}}): each client sends "
                    f"when its last request ends; drop {{{key}}} or {{clients}}."
                )
        lengths = [getattr(s, k) for k in ("prompt", "output")]
        if given("trace") and all(x and not str(x).startswith("trace") for x in lengths):
            raise Misuse(
                "{trace} does nothing when {prompt} and {output} both set the lengths; drop "
                "{trace}, or write trace for the lengths to take from it."
            )
        return
    if closed_loops:
        for key in (
            "think_s",
            "client_protocol",
            "length_range_ratio",
            "ramp_s",
            "warmup_requests",
            "prompt_pool",
            "prompt_pool_sampling",
        ):
            if given(key):
                raise Misuse(
                    f"{{{key}}} applies to closed loops only; add {{clients}} N or drop it."
                )
    if given("trace") and synthetic:
        key = "prompt" if given("prompt") else "output"
        raise Misuse(
            f"{{{key}}} does nothing with {{trace}}, which brings its own lengths; drop one."
        )
    if not synthetic:
        for key in ("arrival", "cv"):
            if given(key):
                raise Misuse(
                    f"{{{key}}} shapes synthetic arrivals; a trace keeps its own (scale them "
                    f"with {{rate}}); drop {{{key}}} or give {{prompt}}/{{output}}."
                )
    elif closed_loops and not given("rate"):
        raise Misuse("A synthetic workload needs {rate} (requests per second).")
    if given("cv") and s.arrival != "gamma":
        raise Misuse("{cv} shapes gamma arrivals only; add {arrival} gamma or drop {cv}.")


# ---- reading and validating ------------------------------------------------------------------
def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping of settings (keys with dashes become underscores)."""
    p = Path(path)
    if not p.is_file():
        raise ServesimError(f"Config file {str(p)!r} does not exist; check the path.")
    try:
        text = p.read_bytes().decode("utf-8-sig")  # a Windows editor's byte-order mark too
    except UnicodeDecodeError:
        raise ServesimError(
            f"Config file {str(p)!r} is not UTF-8 text; save it as UTF-8."
        ) from None
    except OSError as exc:
        raise ServesimError(f"Cannot read config file {str(p)!r} ({exc.strerror}).") from None
    try:
        doc = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "syntax error"
        raise ServesimError(
            f"Config file {str(p)!r} is not valid YAML/JSON ({first}); fix the syntax."
        ) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ServesimError(
            f"Config file {str(p)!r} must hold a mapping of setting: value, not a "
            f"{type(doc).__name__}."
        )
    return {str(k).replace("-", "_"): v for k, v in doc.items()}


def settings(model: type[S], args: argparse.Namespace) -> S:
    """The command's settings from its parsed flags and `--config FILE` (if given)."""
    path = getattr(args, "config", None)
    file = load_file(path) if path else {}
    flags = {k: v for k, v in vars(args).items() if v is not None and k in model.model_fields}
    return validate(model, flags, file, path)


def validate(
    model: type[S],
    flags: dict[str, Any],
    file: dict[str, Any] | None = None,
    file_name: str | None = None,
) -> S:
    """Flags over file over defaults, validated by `model`; problems become one ServesimError."""
    file = file or {}
    unknown = sorted(set(file) - set(model.model_fields))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(model.model_fields), n=1)
        hint = (
            f"did you mean {close[0]}?"
            if close
            else f"valid keys are: {', '.join(sorted(model.model_fields))}."
        )
        raise ServesimError(f'Unknown setting {key!r} in "{file_name}"; {hint}')
    merged = {**file, **flags}
    from_file = frozenset(k for k in file if k not in flags)

    def spell(key: str) -> str:
        if key in from_file:
            return f'{key} in "{file_name}"'
        return model.POSITIONAL.get(key) or flag(key)

    try:
        obj = model.model_validate(merged)
    except ValidationError as exc:
        raise ServesimError(_sentence(exc, spell)) from None
    except Misuse as exc:
        raise ServesimError(spell_template(exc.template, spell)) from None
    obj._file = file_name
    obj._from_file = from_file
    return obj


_EXPECTED = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false (a YAML/JSON boolean)",
    "bool_parsing": "true or false",
    "string_type": "text",
    "tuple_type": "a list",
    "list_type": "a list",
}


def _shown(v: Any) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _sentence(exc: ValidationError, spell: Any) -> str:
    """One sentence for the first error pydantic found."""
    err = exc.errors(include_url=False)[0]
    loc = err.get("loc") or ()
    key = str(loc[0]) if loc else ""
    name = spell(key) if key else "a setting"
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    got = f", got {_shown(err.get('input'))}"
    if kind == "string_too_short":
        return f"{name} must not be empty; give a value or leave it out."
    if kind == "missing":
        return f"{name} is required; give it."
    if kind in _EXPECTED:
        return f"{name} must be {_EXPECTED[kind]}{got}."
    bounds = {
        "greater_than": "> {gt}",
        "greater_than_equal": "≥ {ge}",
        "less_than": "< {lt}",
        "less_than_equal": "≤ {le}",
    }
    if kind in bounds:
        return f"{name} must be {bounds[kind].format(**ctx)}{got}."
    if kind == "literal_error":
        return f"{name} must be one of {ctx.get('expected')}{got}."
    if kind == "value_error":
        return f"{name} {ctx.get('error')}."
    if kind == "extra_forbidden":
        return f"Unknown setting {name}; remove it."
    return f"{name} is not valid ({err.get('msg', kind)}){got}."


# ---- outputs ---------------------------------------------------------------------------------
def _nearest_existing(p: Path) -> Path:
    anc = p
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    return anc


def _probe_writable(folder: Path, what: str) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ServesimError(
            f"{what}: cannot write in {str(folder)!r} ({exc.strerror}); pick a writable folder."
        ) from None


def check_out_dir(path: str | Path, name: str) -> Path:
    """Make sure an output folder can be created and written, before any work (nothing is
    created here). `name` spells the setting (`--out`)."""
    p = Path(path)
    what = f"{name} {str(p)!r}"
    if p.exists() and not p.is_dir():
        raise ServesimError(f"{what} is a file, not a folder; give a folder for the outputs.")
    anc = _nearest_existing(p)
    if not anc.is_dir():
        raise ServesimError(f"{what} lies under the file {str(anc)!r}; give a folder path.")
    _probe_writable(anc, what)
    return p


def check_out_file(path: str | Path, name: str, ours: Any = None) -> Path:
    """Make sure an output file can be written, before any work. An existing file is replaced
    only when `ours(path)` says servesim wrote it, so a user's file is never overwritten."""
    p = Path(path)
    what = f"{name} {str(p)!r}"
    if p.is_dir():
        raise ServesimError(f"{what} is a folder; give a file path such as fit.json.")
    if p.exists() and ours is not None and not ours(p):
        raise ServesimError(
            f"{what} exists and was not written by servesim; pick another path or move it."
        )
    anc = _nearest_existing(p.parent if str(p.parent) else Path("."))
    if not anc.is_dir():
        raise ServesimError(f"{what} lies under the file {str(anc)!r}; give a file path.")
    _probe_writable(anc, what)
    return p


@contextmanager
def writing(path: str | Path, name: str = "--out") -> Iterator[None]:
    """Turn an OSError while writing outputs (disk full, permissions) into one sentence."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or path
        raise ServesimError(
            f"Cannot write the outputs of {name} {str(path)!r} ({exc.strerror or exc} at "
            f"{str(where)!r}); free some space or pick another folder."
        ) from None


def replace_atomically(path: str | Path, write: Any) -> None:
    """Write a file through `write(tmp_path)` then rename it over `path`: never half a file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def utf8_tables(name: str, folder: str) -> Iterator[None]:
    """Turn a table that is not UTF-8 text into one sentence naming the folder's setting."""
    try:
        yield
    except UnicodeDecodeError:
        raise ServesimError(
            f"A table under {name} {folder!r} is not UTF-8 text; save the CSVs as UTF-8."
        ) from None


def add_switch(group: Any, flag: str, help: str) -> None:
    """An on/off flag (`--x` / `--no-x`) that stays None when not given, so a config file or
    the engine's default decides."""
    group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help)

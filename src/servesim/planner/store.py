"""Result store of a plan: one small Parquet file per finished candidate, written atomically.

A plan streams each result into `<folder>/<plan key>/part-<candidate key>.parquet` as soon as it
is known, so an interrupted plan loses nothing already finished and a rerun of the same question
skips what is there. `consolidate` gathers the parts into one table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from servesim.errors import ServesimError


class PlanStore:
    """Finished candidate rows of one plan question, on disk."""

    def __init__(self, folder: str | Path, plan_key: str) -> None:
        self.dir = Path(folder) / plan_key
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServesimError(f"Cannot create the plan store {str(self.dir)!r}: {exc}.") from None

    def _path(self, key: str) -> Path:
        return self.dir / f"part-{key}.parquet"

    def done_keys(self) -> set[str]:
        """Candidate keys already stored in a part that reads. A part that does not (a file cut
        short by a crash before it reached the disk) is not done: counted as done, its
        candidate would be skipped by every rerun and then dropped by `rows`."""
        return {p.stem.removeprefix("part-") for p in self._parts() if _read(p) is not None}

    def _parts(self) -> list[Path]:
        return sorted(self.dir.glob("part-*.parquet"))

    def add(self, row: dict[str, Any]) -> None:
        """Store one candidate's row (write to a temporary file, then rename: never half a file)."""
        path = self._path(str(row["key"]))
        tmp = path.with_suffix(".tmp")
        pq.write_table(pa.Table.from_pylist([row]), str(tmp))
        os.replace(tmp, path)

    def rows(self) -> list[dict[str, Any]]:
        """Every stored row (parts that fail to read, e.g. from a crashed writer, are skipped)."""
        out = []
        for p in self._parts():
            out.extend(_read(p) or [])
        return out


def _read(path: Path) -> list[dict[str, Any]] | None:
    """The rows of one part, None if it does not read."""
    try:
        return pq.read_table(str(path)).to_pylist()
    except (OSError, pa.ArrowInvalid):
        return None


def write_rows(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write rows (dicts with the same or missing keys) as one Parquet table."""
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    table = pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path))

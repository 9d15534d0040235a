"""Regenerate data/inferencex/changelog_sweeps.csv: which InferenceX configs ran on which day.

From 2025-12-15 InferenceX benchmarks on a push to `main` that adds entries to
`perf-changelog.yaml` (.github/workflows/run-sweep.yml, `on: push: paths: perf-changelog.yaml`):
`utils/process_changelog.py` reads the lines the push adds, and sweeps exactly the configs of
the master config whose names match the added entries' `config-keys` (`*` a wildcard, the
whole name matched: `get_config_keys_from_master`). Entries marked `evals-only` count too: the
dev file holds rows measured on the day of such an entry alone (Qwen3.5 on H200, 2026-03-09,
PR #892), so their runs publish figures as well. A dashboard row measured on a day therefore
comes from a config swept that day; where two configs (a plain and an MTP variant of one
deployment) both match a row, the day's sweeps can tell which ran.

This script walks the commits on the first-parent line of the git dir's HEAD that touch
`perf-changelog.yaml` (each a push to `main`), reads each one's added lines as the workflow
does, and writes one row per push that swept configs: the commit's UTC day, its hash (12 hex
digits) and the added entries' config-key patterns (space-separated, as written).

    python scripts/inferencex_sweeps.py INFERENCEX_GIT [--out F]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inferencex_layouts import LAST_DAY, git

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "inferencex" / "changelog_sweeps.csv"
CHANGELOG = "perf-changelog.yaml"
# The day utils/process_changelog.py (the changelog-driven sweep) entered InferenceX.
FIRST_DAY = "2025-12-15"
FIELDS = ("day", "commit", "config_keys")


def added_keys(gitdir: str, parent: str, commit: str) -> list[str] | None:
    """The config-key patterns of the entries a commit adds, read as process_changelog.py
    reads a push: the diff's added lines parsed as YAML. None when that sweep would not run:
    the diff deletes a non-blank line (process_changelog raises "Deletions are not allowed"; the
    file's reformatting commits) or the added lines do not parse."""
    diff = git(gitdir, "diff", parent, commit, "--", CHANGELOG) if parent else ""
    added = []
    for line in diff.splitlines():
        if line.startswith("-") and not line.startswith("---") and line[1:].strip():
            return None
        if line.startswith("+") and not line.startswith("+++"):
            added.append(line[1:])
    try:
        data = yaml.safe_load("\n".join(added)) or []
    except yaml.YAMLError:
        return None
    entries = [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []
    return sorted({str(k) for e in entries for k in e.get("config-keys") or ()})


def sweeps(gitdir: str, last: str = LAST_DAY) -> list[dict[str, str]]:
    """One row per push (a first-parent commit of HEAD touching the changelog) whose added
    entries name configs, from FIRST_DAY to `last`; a commit whose message holds
    `[skip-sweep]` ran none (run-sweep.yml)."""
    fmt = "--format=%H %P %cI %s"
    log = git(gitdir, "log", "--first-parent", fmt, "HEAD", "--", CHANGELOG)
    rows = []
    for line in reversed(log.splitlines()):
        commit, parent, when, *subject = line.split()
        day = datetime.datetime.fromisoformat(when).astimezone(datetime.UTC).date().isoformat()
        if not FIRST_DAY <= day <= last or "[skip-sweep]" in " ".join(subject):
            continue
        keys = added_keys(gitdir, parent, commit)
        if keys:
            rows.append({"day": day, "commit": commit[:12], "config_keys": " ".join(keys)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("inferencex", help="git dir of SemiAnalysisAI/InferenceX")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    rows = sweeps(args.inferencex)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    print(f"{len(rows)} sweeps written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

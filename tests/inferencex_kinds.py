"""Shared by the InferenceX guard tests: one dashboard-style row's provenance per kind of
deployment in a config table (model, GPU, framework, precision, MTP or not)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

# Dashboard model names and a checkpoint of each prefix: the held-out-like rows' table.
from heldout_like_rows import MODELS as DASHBOARD  # noqa: E402

KIND = ("model_prefix", "gpu", "framework", "precision", "spec_decoding")


def kinds(
    table: tuple[dict[str, str], ...], clients_of: str = "concurrencies"
) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """(first item of each kind, the common columns of a dashboard row it measured at its
    fewest clients): id, provenance, model checkpoint, ISL/OSL, precision."""
    seen = set()
    for item in table:
        key = tuple(item[k] for k in KIND)
        if key in seen or item["model_prefix"] not in DASHBOARD:
            continue
        seen.add(key)
        name, checkpoint = DASHBOARD[item["model_prefix"]]
        clients = (item.get(clients_of) or item["concurrencies"]).split()
        conc = min(int(c) for c in clients)
        day = item["days_in_effect"].split()[0].split("..")[0]
        yield (
            item,
            {
                "id": "-".join(key),
                "silicon_data_source": (
                    f"source_file=2026-04-06.csv; model={name}; silicon_concurrency={conc}; "
                    f"measured={day}T12:00:00Z; image={item['image']}"
                ),
                "model_path": checkpoint,
                "precision": item["precision"],
                "isl": item["isl"],
                "osl": item["osl"],
                "batch_size": str(conc),
            },
        )

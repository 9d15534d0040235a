"""Image counts read from a generic trace's `images` column, sized later, in `simulate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from servesim.cli.main import main
from servesim.errors import ServesimError
from servesim.sim.multimodal import size_images
from servesim.sim.traces import read_trace
from servesim.spec.vision import load_vision

CSV = "arrival_s,prompt_tokens,output_tokens,images\n0.5,100,10,2\n0.0,50,5,\n1.0,80,8,1\n"


def test_csv_and_jsonl_images_column(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text(CSV)
    wl = read_trace(str(p))
    # Rows sorted by arrival; a blank count is 0; no size yet, prompts are the text's.
    assert wl.images.count.tolist() == [0, 2, 1]
    assert not wl.images.sized and wl.prompt_tokens.tolist() == [50, 100, 80]
    enc = load_vision("Qwen/Qwen3-VL-8B-Instruct")
    sized = size_images(wl, enc, 512, 512)
    per = enc.tokens(512, 512)
    assert sized.prompt_tokens.tolist() == [50, 100 + 2 * per, 80 + per]
    j = tmp_path / "t.jsonl"
    rows = [{"arrival_s": 0.0, "prompt_tokens": 10, "output_tokens": 2, "images": 3}]
    rows.append({"arrival_s": 1.0, "prompt_tokens": 10, "output_tokens": 2})
    j.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert read_trace(str(j)).images.count.tolist() == [3, 0]
    # The counts follow the requests through tiling and rescaling.
    assert wl.tiled(6).scaled_to_rate(2.0).images.count.tolist() == [0, 2, 1, 0, 2, 1]


def test_bad_image_counts_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("arrival_s,prompt_tokens,output_tokens,images\n0,10,1,1\n1,10,1,-2\n")
    with pytest.raises(ServesimError, match=r"line 3.*images is -2"):
        read_trace(str(p))


def test_simulate_sizes_the_trace_images(tmp_path: Path, capsys) -> None:
    p = tmp_path / "t.csv"
    p.write_text(CSV)
    args = ["simulate", "--model", "Qwen/Qwen3-VL-8B-Instruct", "--trace", str(p)]
    code = main(
        [*args, "--image-size", "512x512", "--encode-workers", "1", "--out", str(tmp_path / "o")]
    )
    capsys.readouterr()
    assert code == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["images"] == 3 and summary["finished"] == 3
    code = main([*args, "--images-per-request", "1", "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert code == 2 and "images column" in err
    assert np.isfinite(summary["ttft_s"]["mean"])

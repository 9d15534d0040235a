"""Test markers: `engine` tests start a real serving engine (deselect with -m "not engine");
fixtures several test modules share."""

import pytest

from servesim.spec.devices import get_device
from servesim.spec.model import load_model


def pytest_configure(config):
    config.addinivalue_line("markers", "engine: starts a real serving engine on 127.0.0.1")


@pytest.fixture(scope="session")
def llama8():
    """Llama-3.1-8B's bundled config."""
    return load_model("meta-llama/Llama-3.1-8B")


@pytest.fixture(scope="session")
def h100():
    """The catalog's H100 SXM."""
    return get_device("h100_sxm")


@pytest.fixture
def predict_op_names(capsys):
    """Runs `servesim predict ... --json` and returns the names of the operators it lists."""
    import json

    from servesim.cli.main import main

    def run(argv: list[str]) -> set[str]:
        assert main(["predict", *argv, "--json"]) == 0
        return {op["name"] for op in json.loads(capsys.readouterr().out)["operators"]}

    return run


@pytest.fixture
def cli_mean_ttft_s(capsys, tmp_path):
    """Runs `servesim simulate` with the given words and returns the mean TTFT its
    summary.json reports (each call writes into its own folder under `tmp_path`)."""
    import json

    from servesim.cli.main import main

    runs = []

    def run(args: str) -> float:
        out = tmp_path / f"run{len(runs)}"
        runs.append(out)
        assert main([*args.split(), "--out", str(out)]) in (0, None)
        capsys.readouterr()
        return json.loads((out / "summary.json").read_text())["ttft_s"]["mean"]

    return run

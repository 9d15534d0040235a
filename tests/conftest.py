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

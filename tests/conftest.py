"""Test markers: `engine` tests start a real serving engine (deselect with -m "not engine")."""


def pytest_configure(config):
    config.addinivalue_line("markers", "engine: starts a real serving engine on 127.0.0.1")

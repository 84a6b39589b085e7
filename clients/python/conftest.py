"""Fixtures: one real flashsale server for the whole session (each test makes its own sale)."""

import pytest

from flashsale_server import running_server


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("flashsale")) as server:
        yield server

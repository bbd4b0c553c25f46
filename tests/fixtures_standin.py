"""Fixtures for the offline stand-in model (see loopsite/standin).

`standin_server` runs one stand-in for the whole test session on a free port and
yields its base URL (ending in /v1). `standin` points the app's settings at it.
"""

import pytest

from loopsite.standin.server import serve_in_thread


@pytest.fixture(scope="session")
def standin_server():
    server, thread = serve_in_thread("127.0.0.1", 0)
    try:
        yield server.base_url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def standin(standin_server, settings):
    settings.STANDIN_IN_USE = True
    settings.STANDIN_URL = standin_server
    yield standin_server


# --- fault modes (loopsite/standin/faults.py), for the repair-then-fail paths -------------------


def _faulty_server(fault: str):
    server, thread = serve_in_thread("127.0.0.1", 0, fault=fault)
    try:
        yield server.base_url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="session")
def standin_broken_server():
    """A stand-in whose JSON-producing roles always answer invalid JSON (repairs too)."""
    yield from _faulty_server("broken-json")


@pytest.fixture(scope="session")
def standin_broken_once_server():
    """A stand-in whose JSON-producing roles answer invalid JSON first and valid JSON to a repair request."""
    yield from _faulty_server("broken-json-once")


@pytest.fixture(scope="session")
def standin_unknown_trace_server():
    """A stand-in whose insights and evals point at a trace_id that no run has."""
    yield from _faulty_server("unknown-trace")


@pytest.fixture
def standin_broken(standin_broken_server, settings):
    settings.STANDIN_IN_USE = True
    settings.STANDIN_URL = standin_broken_server
    yield standin_broken_server


@pytest.fixture
def standin_broken_once(standin_broken_once_server, settings):
    settings.STANDIN_IN_USE = True
    settings.STANDIN_URL = standin_broken_once_server
    yield standin_broken_once_server


@pytest.fixture
def standin_unknown_trace(standin_unknown_trace_server, settings):
    settings.STANDIN_IN_USE = True
    settings.STANDIN_URL = standin_unknown_trace_server
    yield standin_unknown_trace_server


@pytest.fixture
def standin_rate_limited(settings):
    """A fresh stand-in (its own counts) that answers every other call 429 with Retry-After, each answer after
    0.3 s (so calls overlap); the app's settings point at it. Yields the server: `rate_limiter.refused` /
    `served`, `peak_in_flight` (the most model calls it answered at once)."""
    server, thread = serve_in_thread("127.0.0.1", 0, delay=0.3, fault="rate-limited")
    settings.STANDIN_IN_USE = True
    settings.STANDIN_URL = server.base_url
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

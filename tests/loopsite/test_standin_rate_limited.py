"""The stand-in's `rate-limited` fault: every other call is a 429 with Retry-After."""

import httpx
import pytest

from loopsite.standin import faults
from loopsite.standin.server import serve_in_thread


@pytest.fixture
def rate_limited():
    server, thread = serve_in_thread("127.0.0.1", 0, fault=faults.RATE_LIMITED)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_it_refuses_a_call_once_with_retry_after_then_serves_its_retry(rate_limited):
    body = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "Say hello."}]}
    url = f"{rate_limited.base_url}/chat/completions"
    first = httpx.post(url, json=body)
    assert first.status_code == 429
    assert first.headers["Retry-After"] == str(faults.RATE_LIMIT_RETRY_AFTER)
    assert first.json()["error"]["code"] == "rate_limit_exceeded"
    second = httpx.post(url, json=body)
    assert second.status_code == 200 and second.json()["choices"][0]["message"]["content"]
    assert httpx.post(url, json=body).status_code == 429  # every other call
    assert (rate_limited.rate_limiter.refused, rate_limited.rate_limiter.served) == (2, 1)

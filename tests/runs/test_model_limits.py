"""runs.model_limits: an endpoint's shared limits (Redis) and 429 / 503 answers waited out."""

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest

from runs.model_limits import EndpointLimiter, LimitedTransport, StatusFile, limited_transport, retry_after_seconds

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_or_skip(url: str = REDIS_URL) -> str:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception:  # noqa: BLE001
        pytest.skip(f"Redis is not reachable at {url}")
    return url


def test_it_reads_retry_after_in_seconds_and_as_a_date():
    assert retry_after_seconds(httpx.Headers({"Retry-After": "3"})) == 3
    assert retry_after_seconds(httpx.Headers({"retry-after-ms": "250"})) == 0.25
    assert retry_after_seconds(httpx.Headers({"Retry-After": "Sun, 29 Nov 2026 12:00:10 GMT"}),
                               now=1795953600.0) == pytest.approx(10.0)
    assert retry_after_seconds(httpx.Headers({})) is None
    assert retry_after_seconds(httpx.Headers({"Retry-After": "soon"})) is None


def test_it_retries_a_429_after_its_retry_after_and_says_it_waits(tmp_path):
    status_path = tmp_path / "model_status"
    seen: list[tuple[float, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((time.monotonic(), status_path.read_text() if status_path.exists() else ""))
        if len(seen) == 1:
            return httpx.Response(429, headers={"Retry-After": "0.3"}, json={"error": "slow down"})
        return httpx.Response(200, json={"ok": True})

    transport = LimitedTransport(httpx.MockTransport(answer), limiter=None, status=StatusFile(status_path))

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.post("http://model.test/v1/responses", json={"input": "hi"})

    response = asyncio.run(call())
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert transport.retried == 1
    (first, _), (second, status_during_retry) = seen
    assert second - first >= 0.3
    assert status_path.read_text() == ""  # no longer waiting


def test_it_waits_on_a_503_too_and_gives_up_after_the_retry_limit(tmp_path):
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503, headers={"Retry-After": "0"}, json={"error": "busy"})

    transport = LimitedTransport(httpx.MockTransport(answer), limiter=None, status=StatusFile(None), retry_limit=2)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.post("http://model.test/v1/chat/completions", json={})

    assert asyncio.run(call()).status_code == 503
    assert len(calls) == 3


def test_concurrent_calls_share_the_endpoints_slots_in_redis(tmp_path):
    url = _redis_or_skip()
    key = f"loopsite-test:{uuid.uuid4().hex}"
    in_flight = 0
    peak = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.2)
        in_flight -= 1
        return httpx.Response(200, json={"ok": True})

    status = StatusFile(tmp_path / "model_status")
    waiting_seen = []

    async def main() -> list[int]:
        # Two transports as two worker processes would have: each its own limiter, one key in Redis.
        transports = [LimitedTransport(httpx.MockTransport(answer), status=status,
                                       limiter=EndpointLimiter(redis_url=url, key=key, max_concurrent=2))
                      for _ in range(2)]
        clients = [httpx.AsyncClient(transport=t) for t in transports]

        async def watch() -> None:
            for _ in range(20):
                waiting_seen.append((tmp_path / "model_status").read_text() if (tmp_path / "model_status").exists() else "")
                await asyncio.sleep(0.05)

        calls = [clients[i % 2].post("http://model.test/v1/responses", json={"i": i}) for i in range(6)]
        responses, _ = await asyncio.gather(asyncio.gather(*calls), watch())
        for client in clients:
            await client.aclose()
        return [r.status_code for r in responses]

    started = time.monotonic()
    assert asyncio.run(main()) == [200] * 6
    assert peak == 2
    assert time.monotonic() - started >= 0.6  # 6 calls, 2 at a time, 0.2 s each
    assert "waiting" in waiting_seen


def test_requests_per_minute_hold_a_call_back(tmp_path):
    url = _redis_or_skip()
    limiter = EndpointLimiter(redis_url=url, key=f"loopsite-test:{uuid.uuid4().hex}", rpm=2)

    async def main() -> list[float]:
        waits = [await limiter.try_acquire(uuid.uuid4().hex) for _ in range(3)]
        await limiter.close()
        return waits

    first, second, third = asyncio.run(main())
    assert (first, second) == (0.0, 0.0)
    assert 55 < third <= 60  # the oldest of the minute's two requests frees a place in about a minute


def test_without_redis_calls_go_ahead(tmp_path):
    transport = limited_transport({"redis_url": "redis://127.0.0.1:1/0", "max_concurrent": 1}, base_url="http://x/v1",
                                  status_path=tmp_path / "s", inner=httpx.MockTransport(lambda r: httpx.Response(200)))

    async def call() -> int:
        async with httpx.AsyncClient(transport=transport) as client:
            return (await client.get("http://x/v1/models")).status_code

    assert asyncio.run(call()) == 200

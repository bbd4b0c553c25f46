"""The limits of one model endpoint, shared by every worker: concurrent calls and requests per minute,
counted in Redis; and 429 / 503 answers retried after the Retry-After they name.

Where: every model call of the app passes through one of these transports, so the limits are the
endpoint's, not one caller's:

- agent runs: `LimitedTransport` (async) in the agent child (runs.agent_child), under its AsyncOpenAI client;
- HALO: the same, in the HALO child (reviews.halo_child), under halo-engine's AsyncOpenAI client;
- insights, eval generation, back-test repairs, the harness draft: `SyncLimitedTransport` under the
  OpenAI client that loopsite.llm.openai_client builds;
- the judge (promptfoo, a node child): `LimitingProxy`, a small HTTP server on 127.0.0.1 that the
  promptfoo child is pointed at for the duration of one eval; it forwards each call to the endpoint
  through `SyncLimitedTransport`.

Each transport

1. takes a slot from `EndpointLimiter` (one Lua script: at most `max_concurrent` leases and `rpm`
   requests in the last 60 s for this endpoint, whichever process on whichever machine asks; Redis's
   own clock, so machines need not agree on the time). A slot is a lease: it is given back when the
   answer's body is closed, and expires by itself after `lease_seconds` if its process died;
2. sends the request; on 429 or 503 it gives the slot back, waits the answer's Retry-After (seconds
   or an HTTP date, capped at `max_retry_after`; a growing back-off when there is none) and tries
   again, up to `retry_limit` times, then hands the last answer to the client;
3. while it waits (for a slot, or for a Retry-After) it writes "waiting" to the run's status file,
   which the runner reads while it beats the row: the run's page says "waiting for the model".

A child's job carries the Redis URL and the limits (on stdin, like the API key, never in the environment).
Without a Redis URL, or with both limits 0, only step 2 and the status file apply. If Redis cannot be
reached, calls go ahead unlimited (a warning is logged): a run never fails for want of a counter.

This module does not import Django.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

log = logging.getLogger(__name__)
_L = TypeVar("_L", bound="_Limiter")

RETRY_STATUSES = (429, 503)
KEY_PREFIX = "loopsite:model-limits"
WINDOW_MS = 60_000
# How long to sleep between two tries for a slot when all are taken (the script says how long
# when the minute's requests are used up).
SLOT_POLL_SECONDS = 0.25

# KEYS: leases (zset token -> expiry ms), window (zset token -> sent ms).
# ARGV: token, max_concurrent, rpm, lease ms. Returns 0 (taken) or the ms to wait before asking again.
ACQUIRE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local maxc = tonumber(ARGV[2])
local rpm = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60000)
if maxc > 0 and redis.call('ZCARD', KEYS[1]) >= maxc then
  return -1
end
if rpm > 0 and redis.call('ZCARD', KEYS[2]) >= rpm then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + 60000 - now)
end
if maxc > 0 then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], lease + 1000)
end
if rpm > 0 then
  redis.call('ZADD', KEYS[2], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], 61000)
end
return 0
"""


def endpoint_key(base_url: str) -> str:
    """The Redis key stem of an endpoint: every worker calling the same base URL shares it."""
    digest = hashlib.sha256(base_url.rstrip("/").encode("utf-8")).hexdigest()[:16]
    return f"{KEY_PREFIX}:{digest}"


def retry_after_seconds(headers: httpx.Headers, *, now: float | None = None) -> float | None:
    """Seconds named by Retry-After (delta seconds or an HTTP date), or by retry-after-ms; None if absent."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class StatusFile:
    """The run's model status, for the runner: "waiting" while any call waits, else empty."""

    WAITING = "waiting"

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.waiters = 0
        self._lock = threading.Lock()

    def _write(self) -> None:
        if self.path is None:
            return
        try:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(self.WAITING if self.waiters else "", encoding="utf-8")
            tmp.replace(self.path)
        except OSError:
            log.warning("could not write the model status file %s", self.path, exc_info=True)

    def __enter__(self) -> StatusFile:
        with self._lock:
            self.waiters += 1
            if self.waiters == 1:
                self._write()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.waiters -= 1
            if self.waiters == 0:
                self._write()


@dataclass
class _Limiter:
    """Slots of one endpoint in Redis: what the async and the blocking limiters share."""

    redis_url: str
    key: str
    max_concurrent: int = 0
    rpm: int = 0
    lease_seconds: float = 600.0

    def __post_init__(self) -> None:
        self._client = None
        self._script = None
        self._broken = False

    @property
    def active(self) -> bool:
        return bool(self.redis_url) and (self.max_concurrent > 0 or self.rpm > 0) and not self._broken

    def _script_call(self, token: str) -> dict[str, Any]:
        return {"keys": [f"{self.key}:leases", f"{self.key}:window"],
                "args": [token, self.max_concurrent, self.rpm, int(self.lease_seconds * 1000)]}

    @staticmethod
    def _seconds(waited: Any) -> float:
        waited = int(waited)
        if waited == 0:
            return 0.0
        return SLOT_POLL_SECONDS if waited < 0 else waited / 1000

    def _unreachable(self, exc: Exception) -> None:
        log.warning("model limits: Redis unreachable (%s: %s); calls go ahead unlimited", type(exc).__name__, exc)
        self._broken = True

    def _release_failed(self) -> None:
        log.warning("model limits: could not release a slot; it expires in %.0f s", self.lease_seconds)


class EndpointLimiter(_Limiter):
    """`await acquire()` returns a token for `await release()`, or None when no limit applies (or Redis is
    unreachable)."""

    def _redis(self):  # noqa: ANN202
        if self._client is None:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=5, socket_timeout=10)
            self._script = self._client.register_script(ACQUIRE_SCRIPT)
        return self._client

    async def try_acquire(self, token: str) -> float:
        """0 if `token` now holds a slot, else the seconds to wait before asking again."""
        self._redis()
        return self._seconds(await self._script(**self._script_call(token)))

    async def acquire(self, *, status: StatusFile) -> str | None:
        if not self.active:
            return None
        token = uuid.uuid4().hex
        waiting: StatusFile | None = None
        try:
            while True:
                try:
                    wait = await self.try_acquire(token)
                except Exception as exc:  # noqa: BLE001 - no counter, no limit: the run goes on
                    self._unreachable(exc)
                    return None
                if wait == 0:
                    return token
                if waiting is None:
                    waiting = status.__enter__()
                await asyncio.sleep(wait + random.uniform(0, SLOT_POLL_SECONDS))
        finally:
            if waiting is not None:
                status.__exit__(None, None, None)

    async def release(self, token: str | None) -> None:
        if token is None or self._client is None:
            return
        try:
            await self._client.zrem(f"{self.key}:leases", token)
        except Exception:  # noqa: BLE001 - the lease expires by itself
            self._release_failed()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


_sync_clients: dict[str, Any] = {}
_sync_clients_lock = threading.Lock()


def _sync_redis(url: str):  # noqa: ANN202
    """One blocking Redis client (and connection pool) per URL and process, shared by its threads."""
    with _sync_clients_lock:
        client = _sync_clients.get(url)
        if client is None:
            import redis

            client = _sync_clients[url] = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        return client


class BlockingEndpointLimiter(_Limiter):
    """The same slots for blocking callers (threads): `acquire()` sleeps until a slot is free."""

    def _redis(self):  # noqa: ANN202
        if self._client is None:
            self._client = _sync_redis(self.redis_url)
            self._script = self._client.register_script(ACQUIRE_SCRIPT)
        return self._client

    def try_acquire(self, token: str) -> float:
        self._redis()
        return self._seconds(self._script(**self._script_call(token)))

    def acquire(self, *, status: StatusFile) -> str | None:
        if not self.active:
            return None
        token = uuid.uuid4().hex
        waiting = False
        try:
            while True:
                try:
                    wait = self.try_acquire(token)
                except Exception as exc:  # noqa: BLE001 - no counter, no limit: the call goes on
                    self._unreachable(exc)
                    return None
                if wait == 0:
                    return token
                if not waiting:
                    waiting = True
                    status.__enter__()
                time.sleep(wait + random.uniform(0, SLOT_POLL_SECONDS))
        finally:
            if waiting:
                status.__exit__(None, None, None)

    def release(self, token: str | None) -> None:
        if token is None or self._client is None:
            return
        try:
            self._client.zrem(f"{self.key}:leases", token)
        except Exception:  # noqa: BLE001 - the lease expires by itself
            self._release_failed()


class _ReleasingStream(httpx.AsyncByteStream):
    """The answer's body; closing it gives the call's slot back (a streamed answer holds its slot
    until the last event is read)."""

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], Awaitable[None]]) -> None:
        self.inner = inner
        self.release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            await self.release()


class _BlockingReleasingStream(httpx.SyncByteStream):
    """`_ReleasingStream` for blocking clients."""

    def __init__(self, inner: httpx.SyncByteStream, release: Callable[[], None]) -> None:
        self.inner = inner
        self.release = release

    def __iter__(self) -> Iterator[bytes]:
        yield from self.inner

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.release()


class _RetryPolicy:
    """Which answers are waited out and for how long: 429 / 503, after the Retry-After they name (capped at
    `max_retry_after`; a doubling back-off from `backoff` when they name none), `retry_limit` times."""

    def __init__(self, *, status: StatusFile, retry_limit: int = 6, max_retry_after: float = 120.0,
                 backoff: float = 1.0) -> None:
        self.status = status
        self.retry_limit = max(0, retry_limit)
        self.max_retry_after = max_retry_after
        self.backoff = backoff
        self.retried = 0  # 429 / 503 answers waited out, for the caller's log

    def retry_wait(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before trying again, or None when this answer is the caller's."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.retry_limit:
            return None
        named = retry_after_seconds(response.headers)
        wait = min(self.max_retry_after, named if named is not None else self.backoff * 2 ** attempt)
        self.retried += 1
        log.info("model answered %s: retry %d/%d after %.1f s", response.status_code, attempt + 1,
                 self.retry_limit, wait)
        return wait


class LimitedTransport(_RetryPolicy, httpx.AsyncBaseTransport):
    """An httpx transport that keeps the endpoint's limits and retries 429 / 503 after Retry-After."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, limiter: EndpointLimiter | None, status: StatusFile,
                 **policy: Any) -> None:
        super().__init__(status=status, **policy)
        self.inner = inner
        self.limiter = limiter

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        attempt = 0
        while True:
            token = await self.limiter.acquire(status=self.status) if self.limiter else None
            released = False

            async def release(token: str | None = token) -> None:
                nonlocal released
                if not released:
                    released = True
                    if self.limiter:
                        await self.limiter.release(token)

            try:
                response = await self.inner.handle_async_request(request)
            except BaseException:
                await release()
                raise
            wait = self.retry_wait(response, attempt)
            if wait is not None:
                await response.aclose()
                await release()
                attempt += 1
                with self.status:
                    await asyncio.sleep(wait)
                continue
            return httpx.Response(status_code=response.status_code, headers=response.headers,
                                  stream=_ReleasingStream(response.stream, release), extensions=response.extensions)

    async def aclose(self) -> None:
        await self.inner.aclose()
        if self.limiter:
            await self.limiter.close()


class BlockingLimitedTransport(_RetryPolicy, httpx.BaseTransport):
    """`LimitedTransport` for blocking clients (openai.OpenAI, httpx.Client); safe to share between threads."""

    def __init__(self, inner: httpx.BaseTransport, *, limiter: BlockingEndpointLimiter | None, status: StatusFile,
                 **policy: Any) -> None:
        super().__init__(status=status, **policy)
        self.inner = inner
        self.limiter = limiter

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        attempt = 0
        while True:
            token = self.limiter.acquire(status=self.status) if self.limiter else None
            released = threading.Event()

            def release(token: str | None = token, released: threading.Event = released) -> None:
                if not released.is_set():
                    released.set()
                    if self.limiter:
                        self.limiter.release(token)

            try:
                response = self.inner.handle_request(request)
            except BaseException:
                release()
                raise
            wait = self.retry_wait(response, attempt)
            if wait is not None:
                response.close()
                release()
                attempt += 1
                with self.status:
                    time.sleep(wait)
                continue
            return httpx.Response(status_code=response.status_code, headers=response.headers,
                                  stream=_BlockingReleasingStream(response.stream, release),
                                  extensions=response.extensions)

    def close(self) -> None:
        self.inner.close()


def _limiter(cls: type[_L], spec: dict[str, Any], base_url: str) -> _L | None:
    limiter = cls(
        redis_url=str(spec.get("redis_url") or ""),
        key=endpoint_key(base_url),
        max_concurrent=int(spec.get("max_concurrent") or 0),
        rpm=int(spec.get("rpm") or 0),
        lease_seconds=float(spec.get("lease_seconds") or 600),
    )
    return limiter if limiter.active else None


def _policy(spec: dict[str, Any]) -> dict[str, Any]:
    return {"retry_limit": int(spec.get("retry_limit", 6)), "max_retry_after": float(spec.get("max_retry_after") or 120)}


def limited_transport(spec: dict[str, Any] | None, *, base_url: str, status_path: Path | None,
                      inner: httpx.AsyncBaseTransport | None = None) -> LimitedTransport:
    """The transport a job asks for: `spec` is the job's "model_limits" (redis_url, max_concurrent,
    rpm, lease_seconds, retry_limit, max_retry_after); missing keys mean no limit."""
    spec = spec or {}
    return LimitedTransport(inner or httpx.AsyncHTTPTransport(), limiter=_limiter(EndpointLimiter, spec, base_url),
                            status=StatusFile(status_path), **_policy(spec))


def blocking_transport(spec: dict[str, Any] | None, *, base_url: str, status_path: Path | None = None,
                       inner: httpx.BaseTransport | None = None) -> BlockingLimitedTransport:
    """`limited_transport` for blocking clients: the same spec, the same Redis slots."""
    spec = spec or {}
    return BlockingLimitedTransport(inner or httpx.HTTPTransport(),
                                    limiter=_limiter(BlockingEndpointLimiter, spec, base_url),
                                    status=StatusFile(status_path), **_policy(spec))


# --- a limiting proxy, for model calls made by a process that is not ours (promptfoo's judge) ---------------

# Headers that describe one hop, not the message: never forwarded either way.
HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                         "upgrade", "host", "content-length", "content-encoding", "accept-encoding"})


class LimitingProxy:
    """An HTTP server on 127.0.0.1 (a free port) that forwards every request to `base_url` through
    `BlockingLimitedTransport`: point a child that calls the model (promptfoo's judge) at `url` and its calls
    keep the endpoint's limits and wait out 429 / 503 like ours. The child's own headers (its API key)
    are forwarded; the proxy holds no secret. Answers are read whole, then sent (a streamed answer
    arrives in one piece). A call the endpoint does not answer within `timeout` seconds gets a 504, one
    that cannot reach it a 502, each with an OpenAI-shaped error body.

        with LimitingProxy(base_url, spec, timeout=60) as proxy:
            ... OPENAI_BASE_URL=proxy.url ...
    """

    def __init__(self, base_url: str, spec: dict[str, Any] | None, *, timeout: float,
                 inner: httpx.BaseTransport | None = None) -> None:
        from http.server import ThreadingHTTPServer

        self.upstream = base_url.rstrip("/")
        self.client = httpx.Client(transport=blocking_transport(spec, base_url=base_url, inner=inner),
                                   timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _proxy_handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="model-limits-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def retried(self) -> int:
        return self.client._transport.retried  # noqa: SLF001 - our own transport

    def __enter__(self) -> LimitingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        self.client.close()

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        suffix = path[3:] if path == "/v1" or path.startswith(("/v1/", "/v1?")) else path
        try:
            response = self.client.request(method, self.upstream + suffix, headers=headers, content=body)
        except httpx.TimeoutException as exc:
            return _proxy_error(504, f"The model endpoint did not answer in time ({type(exc).__name__}).")
        except httpx.HTTPError as exc:
            return _proxy_error(502, f"The model endpoint could not be reached ({_cause(exc)}).")
        kept = [(name, value) for name, value in response.headers.multi_items() if name.lower() not in HOP_HEADERS]
        return response.status_code, kept, response.content


def _cause(exc: BaseException) -> str:
    """`exc` and the errno name under it, as node names it (e.g. "ConnectError: [Errno 111] Connection refused,
    ECONNREFUSED")."""
    import errno

    text = f"{type(exc).__name__}: {exc}"
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in errno.errorcode:
            return f"{text}, {errno.errorcode[seen.errno]}"
        seen = seen.__cause__ or seen.__context__
    return text


def _proxy_error(status: int, message: str) -> tuple[int, list, bytes]:
    import json

    body = {"error": {"message": message, "type": "proxy_error", "param": None, "code": "upstream_unavailable"}}
    return status, [("Content-Type", "application/json")], json.dumps(body).encode("utf-8")


def _proxy_handler(proxy: LimitingProxy):  # noqa: ANN202
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            log.debug("model proxy: " + format, *args)

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_HEADERS}
            status, kept, payload = proxy.forward(self.command, self.path, headers, body)
            try:
                self.send_response(status)
                for name, value in kept:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the child gave up on this call
                self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _relay  # noqa: N815 - the stdlib's names

    return Handler

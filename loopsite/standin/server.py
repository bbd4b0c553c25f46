"""The HTTP server: routes, errors, the per-call delay and one log line per request.

    POST /v1/responses          stream false -> Response JSON; true -> SSE events
    POST /v1/chat/completions   stream false -> chat.completion; true -> chunks + [DONE]
    GET  /v1/models             the model list (any model name is accepted and echoed)

Bodies are read whole and answers are computed before they are sent, so every
answer carries a Content-Length and connections can be kept alive.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import analyst, faults, wire
from .conversation import RequestError, from_chat_request, from_responses_request
from .dispatch import choose_role

log = logging.getLogger("loopsite.standin")

MODEL_IDS = ("loopsite-standin", "gpt-5.5")
MAX_BODY_BYTES = 64 * 1024 * 1024
ROUTES_HELP = "The stand-in serves POST /v1/responses, POST /v1/chat/completions and GET /v1/models."


class HttpError(Exception):
    def __init__(self, status: int, message: str, *, code: str, param: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class StandinServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], *, delay: float = 0.0, fault: str | None = None,
                 probe_commands: tuple[str, ...] = ()):
        super().__init__(address, Handler)
        # Shell commands the analyst runs first in every agent run: configuration of this server
        # (tests look around inside the agent's jail with them), never text from a request.
        self.probe_commands = tuple(command for command in probe_commands if command.strip())
        self.delay = max(0.0, float(delay))
        if fault is not None and fault not in faults.FAULTS:
            raise ValueError(f"Unknown fault {fault!r}; choose one of {', '.join(faults.FAULTS)}.")
        self.fault = fault  # see faults.py: JSON-producing roles answer wrongly on purpose
        self.rate_limiter = faults.RateLimiter() if fault == faults.RATE_LIMITED else None
        # Model calls being answered right now and the most at once since start (tests check that the app keeps
        # MODEL_MAX_CONCURRENT whoever calls); refused (429) calls count too.
        self.in_flight = 0
        self.peak_in_flight = 0
        self.model_calls = 0
        self._count_lock = threading.Lock()

    def _call_started(self) -> None:
        with self._count_lock:
            self.in_flight += 1
            self.model_calls += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _call_ended(self) -> None:
        with self._count_lock:
            self.in_flight -= 1

    def reset_counts(self) -> None:
        with self._count_lock:
            self.peak_in_flight = self.in_flight
            self.model_calls = 0

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LoopsiteStandin/1"
    server: StandinServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # one line per request is written by _finish instead

    # ------------------------------------------------------------ routing

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._handle(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._handle(self._post)

    def do_PUT(self) -> None:  # noqa: N802
        self._handle(self._unsupported)

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle(self._unsupported)

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle(self._unsupported)

    @property
    def route(self) -> str:
        path = self.path.split("?", 1)[0].rstrip("/")
        return path if path.startswith("/v1/") or path == "/v1" else "/v1" + path

    def _get(self, info: dict[str, Any]) -> tuple[int, str, bytes]:
        if self.route == "/v1/models":
            data = [{"id": name, "object": "model", "created": wire.CREATED_AT, "owned_by": "loopsite-standin"}
                    for name in MODEL_IDS]
            return _json(200, {"object": "list", "data": data})
        if self.route.startswith("/v1/models/"):
            name = self.route.removeprefix("/v1/models/")
            return _json(200, {"id": name, "object": "model", "created": wire.CREATED_AT, "owned_by": "loopsite-standin"})
        raise self._not_found()

    def _post(self, info: dict[str, Any]) -> tuple[int, str, bytes]:
        if self.route not in ("/v1/responses", "/v1/chat/completions"):
            self._read_body()
            raise self._not_found()
        raw = self._read_body()
        self.server._call_started()
        try:
            return self._answer(raw, info)
        finally:
            self.server._call_ended()

    def _answer(self, raw: bytes, info: dict[str, Any]) -> tuple[int, str, bytes]:
        if self.server.rate_limiter is not None and self.server.rate_limiter.refuse(raw):
            retry_after = faults.RATE_LIMIT_RETRY_AFTER
            raise HttpError(429, f"Rate limit reached (stand-in fault {faults.RATE_LIMITED}): retry after "
                                 f"{retry_after} s.", code="rate_limit_exceeded", kind="requests",
                            headers={"Retry-After": str(retry_after)})
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HttpError(400, f"Request body is not valid JSON: {exc}", code="invalid_json") from exc
        if not isinstance(body, dict):
            raise HttpError(400, "Request body must be a JSON object.", code="invalid_json")
        request_text = raw.decode("utf-8")
        stream = bool(body.get("stream"))
        try:
            conv = (from_responses_request if self.route == "/v1/responses" else from_chat_request)(body)
        except RequestError as exc:
            raise HttpError(400, str(exc), code="invalid_request", param=exc.param) from exc
        role = choose_role(conv)
        info.update(model=conv.model, role=role.NAME, stream=stream)
        if role is analyst:
            answer = analyst.reply(conv, probe_commands=self.server.probe_commands)
        else:
            answer = role.reply(conv)
        reply = faults.apply(self.server.fault, role, conv, answer)
        if self.server.delay:
            time.sleep(self.server.delay)
        if self.route == "/v1/responses":
            response = wire.responses_object(body, reply, request_text=request_text, prompt_text=conv.prompt_text())
            if stream:
                return 200, "text/event-stream", wire.responses_sse(response).encode("utf-8")
            return _json(200, response)
        completion = wire.chat_object(body, reply, request_text=request_text, prompt_text=conv.prompt_text())
        if stream:
            return 200, "text/event-stream", wire.chat_sse(body, completion).encode("utf-8")
        return _json(200, completion)

    def _unsupported(self, info: dict[str, Any]) -> tuple[int, str, bytes]:
        self._read_body()
        raise HttpError(405, f"Method {self.command} is not supported for {self.path}. {ROUTES_HELP}",
                        code="method_not_allowed")

    def _not_found(self) -> HttpError:
        return HttpError(404, f"Unknown path: {self.command} {self.path}. {ROUTES_HELP}", code="unknown_url")

    # ------------------------------------------------------------ plumbing

    def _read_body(self) -> bytes:
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError as exc:
            raise HttpError(400, "Content-Length is not a number.", code="invalid_request") from exc
        if length > MAX_BODY_BYTES:
            raise HttpError(413, f"Request body is larger than {MAX_BODY_BYTES} bytes.", code="too_large")
        return self.rfile.read(length)

    def _handle(self, action) -> None:  # noqa: ANN001
        started = time.monotonic()
        info: dict[str, Any] = {}
        headers: dict[str, str] = {}
        try:
            status, content_type, payload = action(info)
        except HttpError as exc:
            headers = exc.headers
            status, content_type, payload = _json(exc.status, exc.body())
            info["error"] = exc.message
            if exc.status == 413:
                self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a role bug must not kill the server
            log.exception("stand-in failed on %s %s", self.command, self.path)
            error = HttpError(500, f"Stand-in error: {type(exc).__name__}: {exc}", code="server_error",
                              kind="server_error")
            status, content_type, payload = _json(error.status, error.body())
            info["error"] = error.message
        self.send_response(status)
        self.send_header("Content-Type", content_type + ("; charset=utf-8" if "json" in content_type else ""))
        if content_type == "text/event-stream":
            self.send_header("Cache-Control", "no-cache")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()
        details = " ".join(f"{key}={value}" for key, value in info.items() if key != "error")
        error = f" error={info['error']!r}" if "error" in info else ""
        log.info("%s %s %s %s %.0fms%s", self.command, self.path, status, details or "-",
                 (time.monotonic() - started) * 1000, error)


def _json(status: int, body: dict[str, Any]) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body, ensure_ascii=False).encode("utf-8")


def make_server(host: str = "127.0.0.1", port: int = 8765, *, delay: float = 0.0,
                fault: str | None = None, probe_commands: tuple[str, ...] = ()) -> StandinServer:
    return StandinServer((host, port), delay=delay, fault=fault, probe_commands=probe_commands)


def serve_in_thread(host: str = "127.0.0.1", port: int = 0, *, delay: float = 0.0,
                    fault: str | None = None,
                    probe_commands: tuple[str, ...] = ()) -> tuple[StandinServer, threading.Thread]:
    """Start a server on a background daemon thread (port 0 = any free port); stop it with server.shutdown()."""
    server = make_server(host, port, delay=delay, fault=fault, probe_commands=probe_commands)
    thread = threading.Thread(target=server.serve_forever, name="loopsite-standin", daemon=True)
    thread.start()
    return server, thread

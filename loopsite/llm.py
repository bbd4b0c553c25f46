"""The one place that knows where model calls go.

Every model call in the app (agent runs, insights, eval generation, the judge,
HALO) takes its endpoint from `endpoint()`. With no OPENAI_API_KEY the endpoint is
the offline stand-in model; with a key it is OPENAI_BASE_URL. Nothing else changes.

Every call also keeps the endpoint's limits (MODEL_MAX_CONCURRENT, MODEL_RPM, counted in Redis
by every worker) and waits out a 429 / 503 for the Retry-After it names: `model_limits()` is
what a caller needs to know of them, and `openai_client()` builds its client on the blocking
limited transport of runs.model_limits (handed over by runs.apps, as loopsite imports nothing
from runs). The agent and HALO children and promptfoo's judge take the same spec.
"""

import json
import re
import threading
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from .hooks import Hook


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    api_key: str
    is_standin: bool

    def __repr__(self) -> str:  # never print the key
        return f"Endpoint(base_url={self.base_url!r}, is_standin={self.is_standin})"


def endpoint() -> Endpoint:
    if settings.STANDIN_IN_USE:
        return Endpoint(base_url=settings.STANDIN_URL, api_key="standin-no-key", is_standin=True)
    return Endpoint(
        base_url=settings.OPENAI_BASE_URL,
        api_key=settings.OPENAI_API_KEY,
        is_standin=False,
    )


def model_limits(*, lease_seconds: float) -> dict[str, Any]:
    """The endpoint's limits as runs.model_limits reads them: the Redis URL that counts them (only when
    a limit is set), the limits, how long a slot is held at most if its holder dies (`lease_seconds`:
    longer than the caller's longest call), and how 429 / 503 answers are waited out."""
    limited = bool(settings.MODEL_MAX_CONCURRENT or settings.MODEL_RPM)
    return {
        "redis_url": settings.REDIS_URL if limited else "",
        "max_concurrent": settings.MODEL_MAX_CONCURRENT,
        "rpm": settings.MODEL_RPM,
        "lease_seconds": lease_seconds,
        "retry_limit": settings.MODEL_RETRY_LIMIT,
        "max_retry_after": settings.MODEL_MAX_RETRY_AFTER_SECONDS,
    }


# The blocking limited transport: runs.model_limits.blocking_transport, handed over by runs.apps.
def _no_transport(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("loopsite.llm has no limited transport: the runs app is not ready (django.setup()).")


limited_transport = Hook(default=_no_transport)


def openai_client(*, timeout: float = 120.0, max_retries: int = 2):
    """An OpenAI client for the app's endpoint whose every call keeps the endpoint's limits and waits out
    429 / 503 (see the module docstring)."""
    from openai import DefaultHttpxClient, OpenAI

    _build_answer_models()
    ep = endpoint()
    limits = model_limits(lease_seconds=timeout * (max_retries + 1) + 30)
    http_client = DefaultHttpxClient(transport=limited_transport(limits, base_url=ep.base_url), timeout=timeout)
    return OpenAI(base_url=ep.base_url, api_key=ep.api_key, timeout=timeout, max_retries=max_retries,
                  http_client=http_client)


_answer_models = threading.Lock()


def _build_answer_models() -> None:
    """openai's response models build their pydantic schema on first use. Two threads that parse their first
    answer at once can see it half built ("type object 'Response' has no attribute '__pydantic_core_schema__'"),
    so the first client builds them, under a lock, before any answer arrives (about 30 ms, once per process)."""
    from openai.types.chat import ChatCompletion
    from openai.types.responses import Response

    with _answer_models:
        for model in (Response, ChatCompletion):
            if not model.__pydantic_complete__:
                model.model_rebuild()


class SchemaError(ValueError):
    """Model output that is not valid JSON or does not fit the schema it was asked for."""


def parse_json(text: str) -> Any:
    """The seed's extract_json: the first ```json fenced block of a model's answer, else the whole text."""
    text = (text or "").strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)
    candidate = fenced.group(1).strip() if fenced else text
    if not candidate:
        raise SchemaError("Invalid JSON: the output is empty.")
    try:
        return json.loads(candidate)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"Invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.") from exc
    except ValueError as exc:  # e.g. a number with more digits than Python converts
        raise SchemaError(f"Invalid JSON: {exc}.") from exc

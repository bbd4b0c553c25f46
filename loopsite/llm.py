"""The one place that knows where model calls go.

Every model call in the app (agent runs, insights, eval generation, the judge,
HALO) takes its endpoint from `endpoint()`. With no OPENAI_API_KEY the endpoint is
the offline stand-in model; with a key it is OPENAI_BASE_URL. Nothing else changes.
"""

from dataclasses import dataclass

from django.conf import settings


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


def openai_client(*, timeout: float = 120.0, max_retries: int = 2):
    from openai import OpenAI

    ep = endpoint()
    return OpenAI(base_url=ep.base_url, api_key=ep.api_key, timeout=timeout, max_retries=max_retries)

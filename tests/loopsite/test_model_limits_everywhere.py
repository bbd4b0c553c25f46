"""Every model call of the app keeps the endpoint's limits and waits out 429s, whoever makes it.

The stand-in (fault `rate-limited`, 0.3 s per answer) refuses every first arrival of a request with
429 + Retry-After and counts the calls it answers at once (`peak_in_flight`): the limits are measured
where they matter, at the endpoint.
"""

import threading
import time

import httpx
import pytest

from loopsite.llm import model_limits, openai_client
from runs.model_limits import LimitingProxy

pytestmark = pytest.mark.django_db


def _redis_or_skip(settings) -> None:
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1).ping()
    except Exception:  # noqa: BLE001
        pytest.skip(f"Redis is not reachable at {settings.REDIS_URL}")


def _in_threads(calls):
    results, errors = [None] * len(calls), []

    def call(index, fn):
        try:
            results[index] = fn()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(index, fn)) for index, fn in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    return results


def _ask(index):
    # max_retries=0: the SDK itself never retries, so a 429 is waited out by the transport or not at all.
    client = openai_client(timeout=30, max_retries=0)
    return client.responses.create(model="gpt-5.5", input=f"Say hello, caller {index}.").output_text


def test_openai_client_waits_out_429s_and_keeps_the_concurrent_limit(standin_rate_limited, settings):
    _redis_or_skip(settings)
    settings.MODEL_MAX_CONCURRENT = 2
    server = standin_rate_limited
    started = time.monotonic()
    answers = _in_threads([lambda i=i: _ask(i) for i in range(6)])
    assert all(answers)
    assert (server.rate_limiter.refused, server.rate_limiter.served) == (6, 6)  # each call refused once, then served
    assert time.monotonic() - started >= 1.0  # the Retry-After (1 s) was waited
    assert server.peak_in_flight == 2  # calls overlapped, never more than MODEL_MAX_CONCURRENT


def test_without_a_limit_the_same_calls_overlap_freely(standin_rate_limited, settings):
    settings.MODEL_MAX_CONCURRENT = 0
    settings.MODEL_RPM = 0
    _in_threads([lambda i=i: _ask(i) for i in range(6)])
    assert standin_rate_limited.peak_in_flight > 2  # so the test above measures the limit, not the machine


def test_the_judges_proxy_and_our_client_share_one_limit(standin_rate_limited, settings):
    """promptfoo's judge reaches the endpoint through LimitingProxy: its calls and the app's count together."""
    _redis_or_skip(settings)
    settings.MODEL_MAX_CONCURRENT = 2
    server = standin_rate_limited
    body = {"model": "gpt-5.5", "messages": [{"role": "user", "content": "Grade this answer."}]}
    with LimitingProxy(server.base_url, model_limits(lease_seconds=60), timeout=30) as proxy:
        def judge(index):
            answer = httpx.post(f"{proxy.url}/chat/completions", timeout=30,
                                json={**body, "user": f"judge-{index}"}, headers={"Authorization": "Bearer x"})
            assert answer.status_code == 200, answer.text
            return answer.json()["choices"][0]["message"]["content"]

        answers = _in_threads([lambda i=i: judge(i) for i in range(4)] + [lambda i=i: _ask(i) for i in range(4)])
        assert proxy.retried == 4
    assert all(answers)
    assert (server.rate_limiter.refused, server.rate_limiter.served) == (8, 8)
    assert server.peak_in_flight == 2


def test_the_proxy_answers_an_unreachable_endpoint_at_once_with_the_reason(settings, refused_url):
    with LimitingProxy(refused_url, {}, timeout=5) as proxy:
        started = time.monotonic()
        answer = httpx.post(f"{proxy.url}/chat/completions", json={"model": "m"}, timeout=10)
    assert time.monotonic() - started < 5
    assert answer.status_code == 502 and "ECONNREFUSED" in answer.json()["error"]["message"]


def test_the_first_client_builds_the_answer_models_before_any_thread_parses_one():
    """openai's models build their schema on first use; threads parsing their first answers at once once saw
    one half built (AttributeError: 'Response' has no attribute '__pydantic_core_schema__', in CI). In a fresh
    interpreter the models start unbuilt, and making the first client builds them."""
    import os
    import subprocess
    import sys

    from django.conf import settings as django_settings

    script = (
        "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'loopsite.settings'); django.setup()\n"
        "from openai.types.chat import ChatCompletion\n"
        "from openai.types.responses import Response\n"
        "before = (Response.__pydantic_complete__, ChatCompletion.__pydantic_complete__)\n"
        "from loopsite.llm import openai_client\n"
        "openai_client()\n"
        "print(before, (Response.__pydantic_complete__, ChatCompletion.__pydantic_complete__))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=django_settings.BASE_DIR, env={**os.environ, "DJANGO_DEBUG": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(False, False) (True, True)"

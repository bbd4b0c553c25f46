"""Request checks that every view needs and no view should repeat."""

import time

from django.db import connection
from django.http import HttpResponseBadRequest


class RejectNulCharacters:
    """A NUL character in the address, a query parameter or a form field is refused with a 400 that
    names where it is.

    PostgreSQL cannot store or compare text with NUL in it (a DataError, so a 500), and no real input
    holds one. Django's form fields refuse it too; this covers URL parameters, query strings and the
    values that views read straight from request.POST. Form bodies are read only for views that the
    CSRF middleware reads them for anyway (not for csrf_exempt views, which may need the raw body).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if "\x00" in request.path:
            return _refused("The address contains a NUL character.")
        problem = _nul_in(request.GET, "query parameter")
        return _refused(problem) if problem else self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.method == "POST" and not getattr(view_func, "csrf_exempt", False):
            problem = _nul_in(request.POST, "form field")
            if problem:
                return _refused(problem)
        return None


def _nul_in(data, label: str) -> str:
    for key, values in data.lists():
        if "\x00" in key or any("\x00" in value for value in values):
            shown = key.replace("\x00", "\\0")[:80]
            return f"The {label} “{shown}” contains a NUL character, which is not allowed."
    return ""


def _refused(message: str):
    return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")


class ServerTiming:
    """Adds `Server-Timing: app;dur=<ms>, db;dur=<ms>;desc="<n> queries"` to the responses of signed-in users:
    the time the request spent in Django (middleware and view, not the wait for a gunicorn thread) and in
    SQL. Browsers show it in their network panel; bench/reviewers.py reads it. Anonymous callers (the login
    page, the token endpoints) do not get it: how long a lookup took is not theirs to know."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        db = {"seconds": 0.0, "queries": 0}

        def timed(execute, sql, params, many, context):
            started = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                db["seconds"] += time.perf_counter() - started
                db["queries"] += 1

        started = time.perf_counter()
        with connection.execute_wrapper(timed):
            response = self.get_response(request)
        app_ms = (time.perf_counter() - started) * 1000
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return response
        response["Server-Timing"] = (f'app;dur={app_ms:.1f}, db;dur={db["seconds"] * 1000:.1f};'
                                     f'desc="{db["queries"]} queries"')
        return response

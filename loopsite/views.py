"""Site-wide error pages that say what went wrong instead of a bare "Bad Request (400)" or "403 Forbidden"."""

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.contrib.staticfiles import finders
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import HttpResponse, HttpResponseBadRequest
from django.shortcuts import render
from django.template.defaultfilters import filesizeformat
from django.utils.cache import patch_cache_control
from django.utils.html import escape
from django.views.decorators.http import require_GET


def bad_request_message(exception) -> str:
    if isinstance(exception, TooManyFieldsSent):
        return (f"Not saved: the form sent more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} fields, the most "
                "this site accepts in one request. Your text is still in the form: remove some rows and save again.")
    if isinstance(exception, TooManyFilesSent):
        return f"Not saved: the form sent more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES} files in one request."
    if isinstance(exception, RequestDataTooBig):
        return (f"Not saved: the form is larger than {filesizeformat(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)}, the most "
                "this site accepts in one request. Your text is still in the form: shorten it and save again.")
    return "The request could not be read. Reload the page and try again."


def bad_request(request, exception=None):
    """handler400: plain text for HTMX requests (the page's script shows it where the form reports its
    status), a small page otherwise. It renders no site template: the request may be half-read."""
    message = bad_request_message(exception)
    if request.headers.get("HX-Request") == "true":
        return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")
    page = (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Bad request · Loopsite</title></head>"
        f"<body><h1>Bad request (400)</h1><p>{escape(message)}</p>"
        "<p>Use your browser's Back button to return to the form.</p></body></html>"
    )
    return HttpResponseBadRequest(page, content_type="text/html; charset=utf-8")


# --- 403, 404 and 500: the site's own pages, with navigation and the reason where it is safe to tell ---


def _error_page(request, *, status: int, template: str, reason: str = ""):
    """HTMX requests get the reason as plain text (the page's script shows it where the form reports its
    status; htmx swaps nothing on an error); others get the page, which extends the site's base."""
    if request.headers.get("HX-Request") == "true":
        return HttpResponse(reason or template.split(".")[0], status=status, content_type="text/plain; charset=utf-8")
    return render(request, template, {"reason": reason, "path": request.path}, status=status)


def permission_denied(request, exception=None):
    """handler403. PermissionDenied messages on this site are written for the user ("This needs the
    approver role.", "blind review hides it until you submit your own"), so they are shown."""
    reason = str(exception or "").strip()
    return _error_page(request, status=403, template="403.html", reason=reason)


def page_not_found(request, exception=None):
    """handler404. Http404's own message names models and queries; the page says it in plain words."""
    return _error_page(request, status=404, template="404.html",
                       reason="This page does not exist, or what it showed has been deleted.")


def server_error(request):
    """handler500: the styled page when the site can render it; if that fails too (say the database is
    down, which the navigation needs), a bare page that renders nothing from the site."""
    try:
        return _error_page(request, status=500, template="500.html",
                           reason="Something went wrong on the server. It has been logged; try again in a moment.")
    except Exception:  # noqa: BLE001 - the error page must not fail
        page = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Server error · Loopsite</title>"
                "</head><body><h1>Server error (500)</h1><p>Something went wrong on the server. Try again in a moment."
                "</p><p><a href=\"/\">Back to your inbox</a></p></body></html>")
        return HttpResponse(page, status=500, content_type="text/html; charset=utf-8")


@login_not_required
@require_GET
def favicon(request):
    """/favicon.ico, which browsers ask for on every page whatever the page links: the site's SVG icon."""
    path = finders.find("loopsite/favicon.svg")
    with open(path, "rb") as icon:
        response = HttpResponse(icon.read(), content_type="image/svg+xml")
    patch_cache_control(response, public=True, max_age=86400)
    return response

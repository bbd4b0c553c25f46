"""No 500 on bad input: every URL pattern of the project, every form field the pages render, as each role.

For each role (anonymous, outsider, reviewer, approver, engineer, admin) the test walks the URL resolver,
fills every path parameter with a seeded object's id (so the views get past their 404s) and with
oversized, zero and non-numeric values, and sends oversized, negative, non-numeric and missing values
to every query parameter and form field. Form fields are found by reading the forms of every page
(as the admin, who sees them all); each field is fuzzed on its own with the others left valid, so the
bad value reaches the code behind the form. Any response of 500 or more fails the test.
"""

import re
import time
import traceback
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.urls.exceptions import Resolver404
from django.utils import timezone

from loopsite.roles import APPROVER, ENGINEER, REVIEWER
from reviews.models import EvalCase, GateRun, GenerationJob, ReviewAssignment
from runs.models import Batch, Dataroom, DataroomFile, Harness, Question, Run

from ..reviews.builders import make_cycle, make_feedback, make_run
from ..reviews.gate_builders import approved_suite
from ..reviews.optimization_builders import finished_optimization

pytestmark = pytest.mark.django_db

HUGE = str(2**63)
BAD_VALUES = {
    "oversized": HUGE,
    "negative": "-" + HUGE,
    "non-numeric": "abc\u00e9",
    "long": "9" * 5000,
}
BAD_PATH_INTS = ["0", HUGE, "9" * 40]
BAD_PATH_STRS = ["x" * 3000, "..", "%00", "nonexistent"]
# Query parameters that some views read from request.GET, beyond the fields of GET forms.
QUERY_NAMES = ["page", "batch", "harness", "dataroom", "status", "show", "a", "b", "item_text", "version", "next"]
SKIP_NAMES = {"logout", "admin"}  # logout ends the test's session; Django's own admin is not ours
ROLES = ["anonymous", "outsider", "reviewer", "approver", "engineer", "admin"]
REPORT = """
Loopsite report

1. Runway is 11 months.
"""


# --- the objects the views need to get past 404 ----------------------------------------------------


@dataclass
class Seed:
    users: dict
    ids: dict  # path prefix -> id, e.g. "runs" -> run.pk
    run: Run
    span_id: str
    file_path: str
    version: str


def seed(django_user_model) -> Seed:
    groups = {role: Group.objects.get_or_create(name=role)[0] for role in (REVIEWER, APPROVER, ENGINEER)}
    users = {}
    for name, roles in (("outsider", ()), ("reviewer", (REVIEWER,)), ("reviewer2", (REVIEWER,)),
                        ("approver", (APPROVER,)), ("engineer", (ENGINEER,))):
        user = django_user_model.objects.create_user(username=f"fz-{name}", password="pw")
        user.groups.add(*(groups[role] for role in roles))
        users[name] = user
    admin = django_user_model.objects.create_superuser(username="fz-admin", password="pw")
    admin.groups.add(*groups.values())
    users["admin"] = admin

    cycle, runs, cases = approved_suite(users["approver"], count=2)
    run = runs[0]
    Harness.objects.create(version="v002", parent=run.harness, system_prompt="Be more careful.",
                           status=Harness.Status.DRAFT)
    dataroom = run.dataroom
    DataroomFile.objects.create(dataroom=dataroom, path="overview.md", content=b"# Overview\n", size=11)
    Dataroom.objects.filter(pk=dataroom.pk).update(file_count=1, total_bytes=11)
    batch = Batch.objects.create(harness=run.harness, dataroom=dataroom, created_by=users["engineer"])
    Run.objects.filter(pk=run.pk).update(batch=batch)
    ReviewAssignment.objects.create(cycle=cycle, run=run, reviewer=users["reviewer"], assigned_by=users["approver"])
    feedback = make_feedback(cycle, run, users["reviewer"], status="submitted")
    make_feedback(cycle, runs[1], users["reviewer2"])
    EvalCase.objects.create(
        cycle=cycle, eval_id="proposed-case", title="A proposal", scoring_method=EvalCase.ScoringMethod.HYBRID,
        expected_behavior="Say it.", source_run=run, rubric="The answer must say it.", status=EvalCase.Status.PROPOSED,
    )
    job = GenerationJob.objects.create(cycle=cycle, kind=GenerationJob.Kind.INSIGHTS, status=GenerationJob.Status.FAILED,
                                       last_error="boom", finished_at=timezone.now())
    now = timezone.now()
    gate_run = GateRun.objects.create(cycle=cycle, harness=cycle.harness, requested_by=users["engineer"],
                                      status=GateRun.Status.SUCCEEDED, total=2, passed=1, failed=1,
                                      started_at=now, finished_at=now, heartbeat_at=now)
    optimization = finished_optimization(cycle, REPORT)
    Question.objects.create(text="What is the burn multiple, and is it improving?", bank_index=99)
    make_cycle(make_run(harness=run.harness), name="second cycle")
    ids = {
        "runs": run.pk, "datarooms": dataroom.pk, "questions": Question.objects.order_by("pk").first().pk,
        "cycles": cycle.pk, "feedback": feedback.pk, "generation": job.pk, "evals": cases[0].pk,
        "gate": gate_run.pk, "halo": optimization.pk,
        "run_pk": run.pk, "user_pk": users["reviewer"].pk,
    }
    return Seed(users=users, ids=ids, run=run, span_id=run.spans.order_by("position").first().span_id,
                file_path="overview.md", version=run.harness.version)


# --- URL patterns -------------------------------------------------------------------------------------

PARAM = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<name>[^>]+)>")


def url_patterns(patterns=None, prefix: str = "", namespace: str = ""):
    """(route with <converter:name> placeholders, url name) for every pattern of the project."""
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            nested = ":".join(filter(None, [namespace, pattern.namespace]))
            yield from url_patterns(pattern.url_patterns, prefix + str(pattern.pattern), nested)
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), ":".join(filter(None, [namespace, pattern.name or ""]))


def fill(route: str, values: dict[str, str]) -> str:
    return "/" + PARAM.sub(lambda m: values[m.group("name")], route)


def valid_values(route: str, seed: Seed) -> dict[str, str]:
    """A seeded object's id for every parameter: `pk` by the route's first segment (runs/, cycles/...)."""
    values = {}
    first = route.split("/", 1)[0]
    for match in PARAM.finditer(route):
        name, converter = match.group("name"), match.group("converter") or "str"
        if name == "pk":
            values[name] = str(seed.ids.get(first, 1))
        elif name in seed.ids:
            values[name] = str(seed.ids[name])
        elif name == "span_id":
            values[name] = seed.span_id
        elif name == "path":
            values[name] = seed.file_path
        elif name == "version":
            values[name] = seed.version
        else:
            values[name] = "1" if converter == "int" else "x"
    return values


def bad_path_variants(route: str, good: dict[str, str]):
    for match in PARAM.finditer(route):
        name, converter = match.group("name"), match.group("converter") or "str"
        for bad in BAD_PATH_INTS if converter == "int" else BAD_PATH_STRS:
            yield {**good, name: bad}


# --- forms found in the pages ----------------------------------------------------------------------------


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, list[str]] = field(default_factory=dict)  # name -> values it posts by default
    buttons: list[tuple[str, str]] = field(default_factory=list)  # named submit buttons (op=approve, ...)

    def key(self):
        return self.action, self.method, tuple(sorted(self.fields)), tuple(self.buttons)


class FormParser(HTMLParser):
    def __init__(self, page_url: str):
        super().__init__()
        self.page_url = page_url
        self.forms: list[Form] = []
        self.form: Form | None = None
        self.select: str | None = None
        self.textarea: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            action = a.get("action") or a.get("hx-post") or self.page_url
            self.form = Form(action=urlsplit(action).path or self.page_url, method=(a.get("method") or "get").lower())
            self.forms.append(self.form)
            return
        if tag == "option" and self.form is not None and self.select:
            values = self.form.fields[self.select]
            if "selected" in a or not values:
                values[:] = [a.get("value", "")]
            return
        if self.form is None or not a.get("name") or "disabled" in a:
            return
        name = a["name"]
        if tag == "input":
            kind = (a.get("type") or "text").lower()
            if kind in ("submit", "button", "image"):
                self.form.buttons.append((name, a.get("value") or ""))
            elif kind in ("checkbox", "radio"):  # posted only when checked; the name is fuzzed either way
                values = self.form.fields.setdefault(name, [])
                if "checked" in a:
                    values[:] = [*values, a.get("value", "on")] if kind == "checkbox" else [a.get("value", "on")]
            elif kind != "file":
                self.form.fields.setdefault(name, []).append(a.get("value") or "")
        elif tag == "button" and (a.get("type") or "submit") == "submit":
            self.form.buttons.append((name, a.get("value") or ""))
        elif tag == "select":
            self.select = name
            self.form.fields.setdefault(name, [])
        elif tag == "textarea":
            self.textarea = name
            self.form.fields.setdefault(name, [""])

    def handle_data(self, data):
        if self.form is not None and self.textarea:
            self.form.fields[self.textarea] = [data]

    def handle_endtag(self, tag):
        if tag == "form":
            self.form = None
        elif tag == "select":
            self.select = None
        elif tag == "textarea":
            self.textarea = None


def discover_forms(client: Client, urls: list[str]) -> list[Form]:
    found: dict = {}
    for url in urls:
        response = client.get(url)
        if response.status_code != 200 or "html" not in response.get("Content-Type", ""):
            continue
        parser = FormParser(url)
        parser.feed(response.content.decode())
        for form in parser.forms:
            try:
                match = resolve(form.action)
            except Resolver404:
                continue
            if match.url_name in SKIP_NAMES or form.action.startswith("/admin/"):
                continue
            # One form per view and set of fields: the same form on every row of a list is fuzzed once.
            found.setdefault((match.url_name, *form.key()[1:]), form)
    return list(found.values())


# --- the test ---------------------------------------------------------------------------------------------


class Checker:
    def __init__(self, client: Client):
        self.client = client
        self.failures: list[str] = []
        self.requests = 0

    def send(self, method: str, url: str, data=None, htmx: bool = False):
        headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
        self.requests += 1
        if method == "get":
            response = self.client.get(url, data or {}, **headers)
        else:
            response = self.client.post(url, data or {}, **headers)
        if response.status_code >= 500:
            shown = {k: (v if len(str(v)) < 60 else str(v)[:57] + "...") for k, v in (data or {}).items()}
            where = ""
            exc_info = getattr(response, "exc_info", None)
            if exc_info:
                frames = traceback.extract_tb(exc_info[2])
                ours = [f for f in frames if "/site-packages/" not in f.filename] or frames
                where = f" {exc_info[0].__name__}: {str(exc_info[1])[:120]} at {ours[-1].filename}:{ours[-1].lineno}"
            self.failures.append(f"{method.upper()} {url[:120]} {shown} -> {response.status_code}{where}")
        return response


def client_for(role: str, seed: Seed) -> Client:
    client = Client(raise_request_exception=False)
    if role != "anonymous":
        client.force_login(seed.users[role])
    return client


@pytest.mark.parametrize("role", ROLES)
def test_no_input_gives_a_500(role, django_user_model, settings):
    started = time.monotonic()
    settings.DEBUG_PROPAGATE_EXCEPTIONS = False
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # the login form is fuzzed too
    data = seed(django_user_model)
    routes = [(route, name) for route, name in url_patterns()
              if name not in SKIP_NAMES and not route.startswith("admin/")]
    assert len(routes) > 40  # the walk found the project's patterns
    checker = Checker(client_for(role, data))

    good_urls = []
    for route, _name in routes:
        good = valid_values(route, data)
        url = fill(route, good)
        good_urls.append(url)
        checker.send("get", url, htmx=True)
        for variant in bad_path_variants(route, good):
            checker.send("get", fill(route, variant))
        for label in ("oversized", "negative", "long"):
            checker.send("get", url, {name: BAD_VALUES[label] for name in QUERY_NAMES})
        checker.send("post", url, {}, htmx=True)  # every field missing
        checker.send("post", url, {name: BAD_VALUES["non-numeric"] for name in QUERY_NAMES})

    # Every form on every page (found as the admin, who sees them all): as it stands (each named submit
    # button), every field bad at once, and each field bad or missing on its own with the others valid.
    forms = discover_forms(client_for("admin", data), good_urls)
    assert any(form.method == "post" for form in forms)
    for form in forms:
        base = {name: values if len(values) != 1 else values[0] for name, values in form.fields.items()
                if name != "csrfmiddlewaretoken"}
        for name, value in form.buttons or [(None, None)]:
            checker.send(form.method, form.action, {**base, **({name: value} if name else {})}, htmx=True)
        for label, bad in BAD_VALUES.items():
            checker.send(form.method, form.action, {name: bad for name in base}, htmx=label != "long")
        button = dict(form.buttons[:1])
        for name in list(base) + [n for n, _ in form.buttons]:
            for label in ("oversized", "negative", "non-numeric"):
                checker.send(form.method, form.action, {**base, **button, name: BAD_VALUES[label]},
                             htmx=label != "negative")
            missing = {k: v for k, v in {**base, **button}.items() if k != name}
            checker.send(form.method, form.action, missing, htmx=True)

    elapsed = time.monotonic() - started
    assert not checker.failures, f"{len(checker.failures)} of {checker.requests} requests gave a 500:\n" + "\n".join(
        checker.failures[:40])
    print(f"{role}: {checker.requests} requests, {len(forms)} forms, {elapsed:.1f}s")


def test_a_nul_character_is_refused_naming_where_it_is(django_user_model):
    """PostgreSQL cannot hold NUL in text: a 400 that says where it was, before any view runs."""
    data = seed(django_user_model)
    client = client_for("admin", data)
    response = client.get("/harnesses/%00/")
    assert response.status_code == 400 and "The address contains a NUL character." in response.content.decode()
    response = client.get("/runs/start/", {"harness": "v001\x00"})
    assert response.status_code == 400 and "query parameter “harness”" in response.content.decode()
    for content_type in ("application/x-www-form-urlencoded", None):  # as htmx posts; multipart
        body = "harness=v%00" if content_type else {"harness": "v\x00"}
        extra = {"content_type": content_type} if content_type else {}
        response = client.post("/harnesses/cycle/", body, HTTP_HX_REQUEST="true", **extra)
        assert response.status_code == 400 and "form field “harness”" in response.content.decode()

from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.urls import reverse

from loopsite.models import AuditEvent
from reviews.models import Cycle
from runs import harness_views, promotion, tasks
from runs.models import Agent, Batch, Harness, Run
from runs.promotion import PassRatePoint
from runs.versions import pass_rate_chart

from .ui_builders import make_dataroom, make_harness, make_question, make_run

pytestmark = pytest.mark.django_db

LIST = reverse("runs:harness-list")
START = reverse("runs:harness-start-cycle")
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=dt_timezone.utc)


@pytest.fixture
def tree():
    """v001 -> v002 -> v004, and v001 -> v003 (v003 created before v004)."""
    v1 = make_harness("v001", status="retired")
    v2 = make_harness("v002", status="promoted", parent=v1)
    v3 = make_harness("v003", status="draft", parent=v1)
    v4 = make_harness("v004", status="draft", parent=v2)
    make_run(harness=v2, question=make_question("An old question", is_default=False))
    return v1, v2, v3, v4


# --- the versions page --------------------------------------------------------------------------------


def test_the_history_is_a_tree_by_parent(client_for, reviewer, tree):
    response = client_for(reviewer).get(LIST)
    assert response.status_code == 200
    assert [(row.harness.version, row.depth) for row in response.context["tree"]] == [
        ("v001", 0), ("v002", 1), ("v004", 2), ("v003", 1),
    ]
    html = response.content.decode()
    assert html.index(">v002</a>") < html.index(">v004</a>") < html.index(">v003</a>")
    assert '<span class="badge badge-promoted">Promoted</span>' in html
    assert f'href="{reverse("runs:harness-diff")}?a=v002&amp;b=v004">Diff with parent</a>' in html
    assert reverse("runs:harness-new", args=["v004"]) not in html  # reviewers do not create versions
    assert 'data-testid="start-cycle"' not in html


def test_engineers_get_new_version_links_and_the_cycle_button(client_for, engineer, tree):
    html = client_for(engineer).get(LIST).content.decode()
    assert f'href="{reverse("runs:harness-new", args=["v004"])}"' in html
    assert "Start a new cycle on v002</button>" in html


@pytest.fixture
def two_agents(engineer, tree):
    """The built-in agent's tree, and an external agent with versions 1.0 (promoted) and 2.0 from its traces."""
    from runs.models import Agent

    bot = Agent.create_external(by=engineer, name="Support bot")[0]
    old = bot.harness_for_version("1.0")
    Harness.objects.filter(pk=old.pk).update(status=Harness.Status.PROMOTED)
    return bot, old, bot.harness_for_version("2.0")


def test_the_versions_page_filters_by_agent(client_for, engineer, two_agents, monkeypatch):
    bot, old, new = two_agents
    points = [
        PassRatePoint(version="v002", pass_rate=0.8, passed=4, total=5, at=T0, label="5 of 5", suite_size=5),
        PassRatePoint(version=old.version, pass_rate=0.5, passed=1, total=2, at=T0, label="2 of 2", suite_size=2),
        PassRatePoint(version=new.version, pass_rate=1.0, passed=2, total=2, at=T0, label="2 of 2", suite_size=2),
    ]
    monkeypatch.setattr(promotion, "pass_rate_history", lambda agent=None: [  # as the hook answers: one agent's
        point for point in points if agent is None or Harness.objects.get(version=point.version).agent_id == agent.pk])
    client = client_for(engineer)
    everything = client.get(LIST)
    assert len(everything.context["tree"]) == 6
    html = everything.content.decode()
    # Two agents' suites are not one line: the chart waits for a choice; each agent's promoted version has its button.
    assert 'data-testid="choose-agent"' in html and "<svg" not in html
    assert "Start a new cycle on v002</button>" in html and f"Start a new cycle on {old.version}</button>" in html

    mine = client.get(LIST, {"agent": bot.slug})
    assert [row.harness.version for row in mine.context["tree"]] == [old.version, new.version]
    html = mine.content.decode()
    assert html.count("<circle ") == 2 and f"<title>{new.version}: 2/2 passed (100%) on 2 of 2</title>" in html
    assert "v002" not in html.split('data-testid="pass-rate-chart"')[1].split("</svg>")[0]
    assert f"Start a new cycle on {old.version}</button>" in html and "Start a new cycle on v002" not in html
    assert f'<option value="{bot.slug}" selected>' in html

    unknown = client.get(LIST, {"agent": "no-such-agent"})  # ignored, as on the other lists
    assert unknown.status_code == 200 and len(unknown.context["tree"]) == 6


def test_the_compare_form_defaults_to_the_newest_version_and_its_parent(client_for, reviewer, tree):
    html = client_for(reviewer).get(LIST).content.decode()
    assert '<select name="a"><option value="v004">v004</option><option value="v003">v003</option><option value="v002" selected>' in html
    assert '<select name="b"><option value="v004" selected>' in html


def test_without_gate_results_there_is_no_chart(client_for, reviewer, tree):
    html = client_for(reviewer).get(LIST).content.decode()
    assert 'data-testid="no-gate-results"' in html and "<svg" not in html


def test_gate_pass_rates_are_drawn_as_an_svg_chart(client_for, reviewer, tree, monkeypatch):
    monkeypatch.setattr(promotion, "pass_rate_history", lambda agent=None: [
        PassRatePoint(version="v001", pass_rate=0.4, passed=2, total=5, at=T0, label="5 of 6 suite cases", suite_size=6),
        PassRatePoint(version="v002", pass_rate=0.8, passed=4, total=5, at=T0 + timedelta(days=1),
                      label="5 of 6 suite cases", suite_size=6),
        PassRatePoint(version="v004", pass_rate=0.6, passed=3, total=5, at=T0 + timedelta(days=2),
                      label="5 of 6 suite cases", suite_size=6),
    ])
    html = client_for(reviewer).get(LIST).content.decode()
    assert 'data-testid="pass-rate-chart"' in html
    assert html.count("<circle ") == 3
    assert "<title>v002: 4/5 passed (80%) on 5 of 6 suite cases</title>" in html
    assert html.count('data-testid="point-cases">n=5</text>') == 3
    assert '<polyline class="line" points="44.0,112.8 374.0,45.6 704.0,79.2"/>' in html
    assert "4/5 (80%)" in html  # v002 on the current suite, in the table


def test_the_chart_places_points_by_rate():
    chart = pass_rate_chart([PassRatePoint(version="v001", pass_rate=1.0, passed=5, total=5),
                             PassRatePoint(version="v002", pass_rate=0.0, passed=0, total=5)], width=200, height=100)
    (first, second) = chart.points
    assert (first.x, first.y) == (44, 12) and (second.x, second.y) == (184, 60)
    assert pass_rate_chart([]) is None


def _suite_case(eval_id, *, status="approved"):
    from reviews.models import EvalCase

    run = make_run(harness=Harness.objects.get(version="v001"))
    cycle = Cycle.objects.get_or_create(harness=run.harness, name="v001 review")[0]
    return EvalCase.objects.create(cycle=cycle, eval_id=eval_id, title=eval_id, expected_behavior="x", source_run=run,
                                   status=status)


def _gate(harness, verdicts, *, at, status="succeeded", errors=()):
    """A gate run of `harness` with one row per (case, passed); cases in `errors` get an error row."""
    from reviews.models import GateRow, GateRun

    gate_run = GateRun.objects.create(harness=harness, status=status, total=len(verdicts),
                                      passed=sum(1 for _, passed in verdicts if passed), finished_at=at)
    for position, (case, passed) in enumerate(verdicts):
        GateRow.objects.create(gate_run=gate_run, eval_case=case, position=position, eval_id=case.eval_id,
                               passed=passed, error="Run failed." if case in errors else "")
    return gate_run


def test_the_history_is_one_point_per_version_on_the_current_suite(django_assert_num_queries):
    """v001 was gated three times (on different case sets): one point, from each case's latest verdict."""
    v1 = make_harness("v001", status="retired")
    v2 = make_harness("v002", status="promoted", parent=v1)
    a, b, c, d = (_suite_case(name) for name in "abcd")
    retired = _suite_case("old", status="retired")
    _gate(v1, [(a, True), (b, True), (retired, True)], at=T0)
    _gate(v1, [(a, False), (b, False), (c, False)], at=T0 + timedelta(days=1))
    _gate(v1, [(a, True), (d, True)], at=T0 + timedelta(days=2), errors=[d])  # d errored: no verdict
    _gate(v1, [(a, True), (b, True), (c, True), (d, True)], at=T0 + timedelta(days=3), status="failed")
    _gate(v2, [(a, True), (b, True), (c, False), (d, True)], at=T0 + timedelta(days=4))
    with django_assert_num_queries(3):
        history = promotion.pass_rate_history()
    assert [(p.version, p.passed, p.total, p.suite_size, p.label) for p in history] == [
        ("v001", 1, 3, 4, "3 of 4 suite cases"),  # a pass (day 2), b fail and c fail (day 1); d never judged
        ("v002", 3, 4, 4, "4 of 4 suite cases"),
    ]
    assert history[0].pass_rate == pytest.approx(1 / 3) and history[0].at == T0 + timedelta(days=2)
    assert promotion.pass_rate_history(agent=v1.agent) == history  # every version here is the built-in agent's
    other = Agent.objects.create(name="Other bot", slug="other-bot", kind=Agent.Kind.EXTERNAL)
    assert promotion.pass_rate_history(agent=other) == []


def test_the_versions_page_draws_one_point_per_version(client_for, reviewer):
    v1 = make_harness("v001", status="promoted")
    a, b = _suite_case("a"), _suite_case("b")
    for day, passed in enumerate((True, False, True)):
        _gate(v1, [(a, passed), (b, False)], at=T0 + timedelta(days=day))
    html = client_for(reviewer).get(LIST).content.decode()
    assert html.count("<circle ") == 1
    assert "<title>v001: 1/2 passed (50%) on 2 of 2 suite cases</title>" in html


def test_the_history_is_empty_until_a_version_has_a_verdict_on_the_suite():
    assert promotion.pass_rate_history() == []
    make_harness("v001", status="promoted")
    case = _suite_case("a")
    _gate(Harness.objects.get(version="v001"), [(case, True)], at=T0, errors=[case])
    assert promotion.pass_rate_history() == []


def test_the_history_is_empty_without_a_gate_app(monkeypatch):
    monkeypatch.setattr(promotion.comparison_for, "function", None)
    monkeypatch.setattr(promotion.pass_rate_history, "function", None)
    assert promotion.pass_rate_history() == [] and promotion.comparison_for(None) is None


# --- one click: a new cycle on the promoted version -----------------------------------------------------


@pytest.fixture
def sent(monkeypatch):
    """Replace the broker: record the run ids that would have been sent."""
    calls = []
    monkeypatch.setattr(tasks.execute_run, "delay", lambda run_id: calls.append(run_id))
    return calls


@pytest.fixture
def bank():
    room = make_dataroom("alpha")
    make_dataroom("beta")
    questions = [make_question("Runway?", is_default=True), make_question("ARR quality?", is_default=False),
                 make_question("Legal exposure?", is_default=True)]
    return room, questions


def test_one_click_starts_the_default_questions_on_the_promoted_version(
        client_for, engineer, tree, bank, sent, django_capture_on_commit_callbacks):
    room, (q1, _, q3) = bank
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(engineer).post(START, {"harness": "v002"})
    batch = Batch.objects.get()
    cycle = Cycle.objects.get(batch=batch)
    assert response.status_code == 302 and response["Location"] == cycle.get_absolute_url()
    assert (batch.harness.version, batch.dataroom, batch.created_by) == ("v002", room, engineer)
    runs = list(batch.runs.order_by("label"))
    assert [run.question for run in runs] == [q1, q3]
    assert sorted(sent) == sorted(run.pk for run in runs)
    assert all(run.status == Run.Status.QUEUED for run in runs)
    assert AuditEvent.objects.get(action="batch.start").after == {
        "harness": "v002", "dataroom": "alpha", "questions": [q1.pk, q3.pk]}


@pytest.mark.parametrize("role", ["reviewer", "approver"])
def test_only_engineers_start_a_cycle(client_for, request, role, tree, bank, sent):
    assert client_for(request.getfixturevalue(role)).post(START).status_code == 403
    assert not Batch.objects.exists() and sent == []


def test_it_rejects_get(client_for, engineer, tree, bank):
    assert client_for(engineer).get(START).status_code == 405


def test_a_stale_button_starts_nothing(client_for, engineer, tree, bank, sent):
    response = client_for(engineer).post(START, {"harness": "v001"}, follow=True)
    assert "v001 is no longer the promoted version (v002 is); nothing was started." in response.content.decode()
    assert not Batch.objects.exists() and sent == []


def test_without_a_promoted_version_it_says_so(client_for, engineer, bank, sent):
    make_harness("v001", status="draft")
    response = client_for(engineer).post(START, follow=True)
    assert "No harness version is promoted: promote one first." in response.content.decode()
    assert not Batch.objects.exists()


def test_without_default_questions_it_says_so(client_for, engineer, tree, sent):
    make_dataroom("alpha")
    make_question("Not a default", is_default=False)
    response = client_for(engineer).post(START, follow=True)
    assert "No question is marked as a default" in response.content.decode()
    assert not Batch.objects.exists()


def test_the_views_module_serves_the_harness_urls():
    assert reverse("runs:harness-list") == "/harnesses/"
    assert reverse("runs:harness-diff") == "/harnesses/diff/"
    assert harness_views.harness_detail.__name__ == "harness_detail"
    assert Harness.objects.count() == 0

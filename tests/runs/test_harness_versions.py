from datetime import datetime, timedelta, timezone as dt_timezone
from types import SimpleNamespace

import pytest
from django.urls import reverse

from loopsite.models import AuditEvent
from reviews.models import Cycle
from runs import harness_views, promotion, tasks
from runs.models import Batch, Harness, Run
from runs.promotion import PassRatePoint, point_from_gate_run
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


def test_the_compare_form_defaults_to_the_newest_version_and_its_parent(client_for, reviewer, tree):
    html = client_for(reviewer).get(LIST).content.decode()
    assert '<select name="a"><option value="v004">v004</option><option value="v003">v003</option><option value="v002" selected>' in html
    assert '<select name="b"><option value="v004" selected>' in html


def test_without_gate_results_there_is_no_chart(client_for, reviewer, tree):
    html = client_for(reviewer).get(LIST).content.decode()
    assert 'data-testid="no-gate-results"' in html and "<svg" not in html


def test_gate_pass_rates_are_drawn_as_an_svg_chart(client_for, reviewer, tree, monkeypatch):
    monkeypatch.setattr(promotion, "pass_rate_history", lambda: [
        PassRatePoint(version="v001", pass_rate=0.4, passed=2, total=5, at=T0, label="gate run 1"),
        PassRatePoint(version="v002", pass_rate=0.8, passed=4, total=5, at=T0 + timedelta(days=1), label="gate run 2"),
        PassRatePoint(version="v004", pass_rate=0.6, passed=3, total=5, at=T0 + timedelta(days=2), label="gate run 3"),
    ])
    html = client_for(reviewer).get(LIST).content.decode()
    assert 'data-testid="pass-rate-chart"' in html
    assert html.count("<circle ") == 3
    assert "<title>v002 · gate run 2: 4/5 passed (80%)</title>" in html
    assert '<polyline class="line" points="44.0,112.8 374.0,45.6 704.0,79.2"/>' in html
    assert "4/5 (80%)" in html  # v002's last gate in the table


def test_the_chart_places_points_by_rate():
    chart = pass_rate_chart([PassRatePoint(version="v001", pass_rate=1.0, passed=5, total=5),
                             PassRatePoint(version="v002", pass_rate=0.0, passed=0, total=5)], width=200, height=100)
    (first, second) = chart.points
    assert (first.x, first.y) == (44, 12) and (second.x, second.y) == (184, 60)
    assert pass_rate_chart([]) is None


def test_a_gate_run_like_row_becomes_a_point():
    harness = SimpleNamespace(version="v002")
    row = SimpleNamespace(pk=7, cycle=SimpleNamespace(harness=harness), totals={"passed": 3, "total": 4},
                          finished_at=T0)
    assert point_from_gate_run(row) == PassRatePoint(version="v002", pass_rate=0.75, passed=3, total=4, at=T0,
                                                     label="gate run 7")
    stats = SimpleNamespace(pk=8, harness=harness, stats={"successes": 1, "failures": 3}, created_at=T0)
    assert point_from_gate_run(stats).pass_rate == 0.25
    assert point_from_gate_run(SimpleNamespace(pk=9, harness=harness, passed=0, total=0)) is None
    assert point_from_gate_run(SimpleNamespace(pk=10, cycle=None)) is None


def test_the_history_reads_finished_gate_runs_in_time_order(django_assert_num_queries):
    from reviews.models import GateRun

    v1 = make_harness("v001", status="retired")
    v2 = make_harness("v002", status="promoted", parent=v1)
    GateRun.objects.create(harness=v2, status="succeeded", total=5, passed=4, finished_at=T0 + timedelta(days=1))
    GateRun.objects.create(harness=v1, status="succeeded", total=5, passed=2, finished_at=T0)
    GateRun.objects.create(harness=v2, status="failed", total=5, passed=0, finished_at=T0 + timedelta(days=2))
    GateRun.objects.create(harness=v2, status="running")
    GateRun.objects.create(harness=v2, status="succeeded", total=0, passed=0, finished_at=T0 + timedelta(days=3))
    with django_assert_num_queries(1):
        history = promotion.pass_rate_history()
    assert [(p.version, p.passed, p.total, p.pass_rate) for p in history] == [("v001", 2, 5, 0.4), ("v002", 4, 5, 0.8)]


def test_the_history_is_empty_until_the_app_has_a_gate_model(monkeypatch):
    monkeypatch.setattr(promotion, "_gate_runs", lambda: None)
    assert promotion.pass_rate_history() == []


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

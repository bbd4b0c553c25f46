"""Editing an eval proposal: approvers only, inline errors that keep the input, history with a diff."""

import json

import pytest
from django.urls import reverse

from loopsite.models import AuditEvent
from reviews.models import EvalCase, EvalCaseRevision

from .gen_builders import proposed_cases

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def case(standin, reviewer, approver):
    return proposed_cases(reviewer, approver, count=1)["trace-01"]


def form(case, **changes):
    data = {
        "title": case.title, "scoring_method": case.scoring_method, "expected_behavior": case.expected_behavior,
        "rubric": case.rubric, "assertions": json.dumps(case.deterministic_assertions),
        "pass_example": case.pass_example, "fail_example": case.fail_example,
        "edits_seen": str(case.revisions.count()),
    }
    data.update(changes)
    return data


def test_it_saves_an_edit_and_keeps_a_revision_and_an_audit_event(client_for, approver, case):
    url = reverse("reviews:eval-edit", args=[case.pk])
    assertions = [{"type": "icontains", "value": "11 months"}, {"type": "not-contains", "value": "comfortable"}]
    response = client_for(approver).post(url, form(case, title="Runway: name it", assertions=json.dumps(assertions)),
                                         **HTMX)
    assert response.status_code == 200
    assert response["HX-Trigger"] == json.dumps({"evalCaseChanged": {"case": case.pk, "status": "proposed"}})
    assert b'data-testid="case-note">Saved.' in response.content
    before = {"title": case.title, "assertions": case.deterministic_assertions}
    case.refresh_from_db()
    assert case.title == "Runway: name it"
    assert case.deterministic_assertions == assertions
    revision = EvalCaseRevision.objects.get(case=case)
    assert revision.edited_by == approver
    assert revision.before["title"] == before["title"] and revision.after["title"] == "Runway: name it"
    assert revision.before["deterministic_assertions"] == before["assertions"]
    event = AuditEvent.objects.get(action="evalcase.edit", object_id=str(case.pk))
    assert event.actor == approver
    assert event.before["title"] == before["title"] and event.after["title"] == "Runway: name it"


def test_the_history_shows_an_escaped_diff(client_for, approver, case):
    old_rubric_line = case.rubric.splitlines()[0]
    client_for(approver).post(reverse("reviews:eval-edit", args=[case.pk]),
                              form(case, rubric="Pass if it says <b>11 months</b>."))
    page = client_for(approver).get(case.get_absolute_url()).content.decode()
    history = page.split('data-testid="history"')[1]
    assert 'data-testid="revision"' in history and "april</strong> edited" in history
    assert '<span class="diff-add">+Pass if it says &lt;b&gt;11 months&lt;/b&gt;.</span>' in history
    assert f'<span class="diff-del">-{old_rubric_line}</span>' in history
    assert "<b>11 months</b>" not in page
    assert "1 edit" in page


def test_bad_assertions_are_shown_inline_and_the_input_is_kept(client_for, approver, case):
    typed = '[{"type": "regex", "value": "runway"}]'
    response = client_for(approver).post(reverse("reviews:eval-edit", args=[case.pk]),
                                         form(case, assertions=typed, title="My new title"), **HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    assert "Not saved: fix the marked fields." in body
    assert "assertions #1: type &#x27;regex&#x27; is not allowed (use contains, icontains, not-contains)" in body
    assert "[{&quot;type&quot;: &quot;regex&quot;, &quot;value&quot;: &quot;runway&quot;}]</textarea>" in body
    assert 'value="My new title"' in body
    assert not EvalCaseRevision.objects.exists()
    case.refresh_from_db()
    assert case.title != "My new title"


def test_invalid_json_is_reported(client_for, approver, case):
    response = client_for(approver).post(reverse("reviews:eval-edit", args=[case.pk]),
                                         form(case, assertions="[{'type': 'contains'"), **HTMX)
    assert b"Not valid JSON: Expecting property name enclosed in double quotes at line 1 column 3." in response.content


def test_a_judge_case_needs_a_rubric(client_for, approver, case):
    response = client_for(approver).post(reverse("reviews:eval-edit", args=[case.pk]),
                                         form(case, scoring_method="llm_judge", rubric=" "), **HTMX)
    assert b"An LLM-judge or hybrid case needs a rubric." in response.content
    assert not EvalCaseRevision.objects.exists()


def test_a_stale_form_does_not_overwrite_someone_elses_edit(client_for, approver, case, django_user_model):
    from django.contrib.auth.models import Group

    other = django_user_model.objects.create_user(username="otto2")
    other.groups.add(Group.objects.get_or_create(name="approver")[0])
    stale = form(case, title="Mine")
    case.edit(by=other, content={"title": "Theirs"}, edits_seen=0)
    response = client_for(approver).post(reverse("reviews:eval-edit", args=[case.pk]), stale, **HTMX)
    body = response.content.decode()
    assert "someone else edited this case since you opened it" in body
    assert 'value="Mine"' in body
    case.refresh_from_db()
    assert case.title == "Theirs"
    assert EvalCaseRevision.objects.count() == 1


def test_saving_without_changes_writes_no_revision(client_for, approver, case):
    response = client_for(approver).post(reverse("reviews:eval-edit", args=[case.pk]), form(case), **HTMX)
    assert b"No changes to save." in response.content
    assert "HX-Trigger" not in response
    assert not EvalCaseRevision.objects.exists()


def test_it_requires_an_approver(client_for, reviewer, engineer, case):
    for user in (reviewer, engineer):
        response = client_for(user).post(reverse("reviews:eval-edit", args=[case.pk]), form(case, title="Nope"))
        assert response.status_code == 403
    case.refresh_from_db()
    assert case.title != "Nope"


def test_a_rejected_case_cannot_be_edited(client_for, approver, case):
    case.reject(by=approver, reason="Duplicate.")
    response = client_for(approver).post(reverse("reviews:eval-edit", args=[case.pk]), form(case, title="Later"),
                                         **HTMX)
    assert b"Not saved: The case is rejected: it cannot be edited." in response.content
    case.refresh_from_db()
    assert case.title != "Later" and case.status == EvalCase.Status.REJECTED


def test_without_htmx_it_redirects_to_the_case(client_for, approver, case):
    response = client_for(approver).post(reverse("reviews:eval-edit", args=[case.pk]), form(case, title="Plain post"))
    assert response.status_code == 302 and response["Location"] == case.get_absolute_url()

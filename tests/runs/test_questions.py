import pytest
from django.urls import reverse

from loopsite.models import AuditEvent
from runs.models import Question

from .ui_builders import XSS, assert_inert, make_question, make_run

pytestmark = pytest.mark.django_db

URL = reverse("runs:question-list")


def _toggle(q):
    return reverse("runs:question-toggle-default", args=[q.pk])


def test_it_requires_login(client):
    assert client.get(URL).status_code == 302


def test_it_requires_a_role(client_for, outsider):
    assert client_for(outsider).get(URL).status_code == 403


def test_it_lists_the_bank_in_order_with_default_markers(client_for, reviewer):
    second = make_question("Second question here?", is_default=False, bank_index=1)
    first = make_question("First question here?", is_default=True, bank_index=0)
    make_run(question=first)
    response = client_for(reviewer).get(URL)
    assert [q.pk for q in response.context["questions"]] == [first.pk, second.pk]
    html = response.content.decode()
    row = html[html.index(f'id="question-{first.pk}"'):html.index(f'id="question-{second.pk}"')]
    assert '<span class="badge badge-pass">default</span>' in row
    assert "default</span>" not in html[html.index(f'id="question-{second.pk}"'):]


def test_reviewers_see_no_edit_controls(client_for, reviewer):
    q = make_question()
    html = client_for(reviewer).get(URL).content.decode()
    assert _toggle(q) not in html
    assert "Add a question" not in html


def test_reviewers_cannot_add_or_toggle(client_for, reviewer):
    q = make_question(is_default=True)
    client = client_for(reviewer)
    assert client.post(URL, {"text": "A brand new question?"}).status_code == 403
    assert client.post(_toggle(q)).status_code == 403
    q.refresh_from_db()
    assert q.is_default is True
    assert Question.objects.count() == 1


def test_an_engineer_adds_a_question_at_the_end(client_for, engineer):
    make_question("Existing question?", bank_index=4)
    response = client_for(engineer).post(URL, {"text": "  What is   the churn?  ", "is_default": "on"})
    assert response.status_code == 302
    q = Question.objects.get(text="What is the churn?")
    assert q.bank_index == 5 and q.is_default is True
    event = AuditEvent.objects.get(action="question.add")
    assert event.actor == engineer and event.object_id == str(q.pk)


def test_add_errors_are_inline_and_keep_the_input(client_for, engineer):
    make_question("What is the churn?")
    client = client_for(engineer)
    response = client.post(URL, {"text": "What is   the churn?"})
    assert response.status_code == 200
    assert response.context["form"].errors["text"] == ["That question is already in the bank."]
    assert "What is   the churn?</textarea>" in response.content.decode()
    response = client.post(URL, {"text": "short"})
    assert "at least 10 characters" in response.content.decode()
    assert Question.objects.count() == 1


def test_toggle_default_flips_and_audits(client_for, engineer):
    q = make_question(is_default=False)
    response = client_for(engineer).post(_toggle(q))
    assert response.status_code == 302
    q.refresh_from_db()
    assert q.is_default is True
    event = AuditEvent.objects.get(action="question.toggle_default")
    assert event.before == {"is_default": False} and event.after == {"is_default": True}


def test_toggle_with_htmx_returns_the_row(client_for, engineer):
    q = make_question(is_default=True)
    response = client_for(engineer).post(_toggle(q), headers={"HX-Request": "true"})
    assert response.status_code == 200
    body = response.content.decode().strip()
    assert body.startswith(f'<tr id="question-{q.pk}">') and body.endswith("</tr>")
    assert "Make default" in body
    q.refresh_from_db()
    assert q.is_default is False


def test_toggle_rejects_get(client_for, engineer):
    q = make_question()
    assert client_for(engineer).get(_toggle(q)).status_code == 405


def test_question_text_is_escaped(client_for, reviewer):
    make_question(XSS)
    html = client_for(reviewer).get(URL).content.decode()
    assert_inert(html)
    assert "&lt;script&gt;" in html

"""Django admin writes every change to the audit log; audit rows are read-only in admin."""

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, Permission
from django.urls import reverse

from loopsite.admin import AuditedAdmin, AuditEventAdmin
from loopsite.models import AuditEvent
from runs.models import Question

pytestmark = pytest.mark.django_db


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def test_every_registered_admin_is_audited():
    unaudited = [model._meta.label for model, model_admin in admin.site._registry.items()
                 if not isinstance(model_admin, AuditedAdmin) and not isinstance(model_admin, AuditEventAdmin)]
    assert unaudited == []


def test_an_addition_is_recorded_with_the_state_after(admin_client, admin_user):
    response = admin_client.post(reverse("admin:runs_question_add"), {
        "text": "What is the runway in months?", "bank_index": "7",
    })
    assert response.status_code == 302, response.content.decode()[:2000]
    question = Question.objects.get(text="What is the runway in months?")
    (event,) = events("admin.add")
    assert (event.actor, event.object_type, event.object_id) == (admin_user, "runs.question", str(question.pk))
    assert event.before is None
    assert event.after["text"] == "What is the runway in months?" and event.after["bank_index"] == 7


def test_a_change_is_recorded_with_what_changed_before_and_after(admin_client, admin_user):
    question = Question.objects.create(text="What is the burn?", bank_index=1, is_default=False)
    response = admin_client.post(reverse("admin:runs_question_change", args=[question.pk]), {
        "text": "What is the monthly burn?", "bank_index": "1", "is_default": "on",
    })
    assert response.status_code == 302
    (event,) = events("admin.change")
    assert event.actor == admin_user and event.object_id == str(question.pk)
    assert event.before == {"text": "What is the burn?", "is_default": False}
    assert event.after == {"text": "What is the monthly burn?", "is_default": True}


def test_a_deletion_is_recorded_with_the_state_before(admin_client):
    question = Question.objects.create(text="What is the churn?", bank_index=3)
    response = admin_client.post(reverse("admin:runs_question_delete", args=[question.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Question.objects.filter(pk=question.pk).exists()
    (event,) = events("admin.delete")
    assert event.object_id == str(question.pk) and event.before["text"] == "What is the churn?"
    assert event.after is None


def test_a_bulk_delete_records_every_object(admin_client):
    questions = [Question.objects.create(text=f"Question number {n}?", bank_index=n) for n in range(3)]
    response = admin_client.post(reverse("admin:runs_question_changelist"), {
        "action": "delete_selected", "post": "yes", "_selected_action": [q.pk for q in questions],
    })
    assert response.status_code == 302
    assert sorted(event.object_id for event in events("admin.delete")) == sorted(str(q.pk) for q in questions)


def test_role_changes_are_recorded_with_the_many_to_many_ids(admin_client, reviewer):
    group = Group.objects.get(name="reviewer")
    permission = Permission.objects.get(codename="view_question")
    response = admin_client.post(reverse("admin:auth_group_change", args=[group.pk]), {
        "name": "reviewer", "permissions": [permission.pk],
    })
    assert response.status_code == 302
    (event,) = events("admin.change")
    assert event.object_type == "auth.group"
    assert event.before == {"permissions": []} and event.after == {"permissions": [permission.pk]}


def test_a_password_change_is_recorded_without_the_hash(admin_client, reviewer):
    old_hash = reviewer.password
    response = admin_client.post(reverse("admin:auth_user_password_change", args=[reviewer.pk]), {
        "password1": "a-new-long-password-1", "password2": "a-new-long-password-1", "usable_password": "true",
    })
    assert response.status_code == 302, response.content.decode()[:3000]
    (event,) = events("admin.change")
    assert event.object_type == "auth.user" and "password" in event.summary.lower()
    reviewer.refresh_from_db()
    dumped = str(event.before) + str(event.after)
    assert reviewer.password not in dumped and old_hash not in dumped


def test_audit_rows_cannot_be_changed_or_deleted_in_admin(admin_client, admin_user):
    event = AuditEvent.objects.create(actor=admin_user, action="x.test", object_type="runs.run", object_id="1")
    change_url = reverse("admin:loopsite_auditevent_change", args=[event.pk])
    assert admin_client.get(change_url).status_code == 200  # viewable
    assert admin_client.post(change_url, {"action": "y", "summary": "edited"}).status_code == 403
    assert admin_client.post(reverse("admin:loopsite_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    listing = admin_client.get(reverse("admin:loopsite_auditevent_changelist"))
    assert "delete_selected" not in listing.content.decode()
    admin_client.post(reverse("admin:loopsite_auditevent_changelist"), {
        "action": "delete_selected", "post": "yes", "_selected_action": [event.pk],
    })
    event.refresh_from_db()
    assert event.action == "x.test" and event.summary == ""
    assert admin_client.get(reverse("admin:loopsite_auditevent_add")).status_code == 403


def test_inline_rows_changed_in_admin_are_recorded(admin_client):
    from tests.loopsite.test_no_500 import FormParser
    from tests.reviews.builders import make_cycle, make_feedback, make_run

    from reviews.models import Feedback

    run = make_run()
    cycle = make_cycle(run)
    reviewer = Feedback._meta.get_field("reviewer").related_model.objects.create_user(username="rev", password="x")
    feedback = make_feedback(cycle, run, reviewer, observations=("Mention Northstar",), claims=())
    item = feedback.items.get()
    url = reverse("admin:reviews_feedback_change", args=[feedback.pk])
    parser = FormParser(url)
    parser.feed(admin_client.get(url).content.decode())
    form = next(f for f in parser.forms if "items-TOTAL_FORMS" in f.fields)
    data = {name: values if len(values) != 1 else values[0] for name, values in form.fields.items()}
    data["items-0-text"] = "Mention Northstar Holdings"
    response = admin_client.post(url, data)
    assert response.status_code == 302, (response.context["adminform"].form.errors,
                                         [f.errors for f in response.context["inline_admin_formsets"][0].formset])
    item.refresh_from_db()
    assert item.text == "Mention Northstar Holdings"
    (event,) = [e for e in events("admin.change") if e.object_type == "reviews.feedbackitem"]
    assert event.object_id == str(item.pk)
    assert event.before == {"text": "Mention Northstar"} and event.after == {"text": "Mention Northstar Holdings"}

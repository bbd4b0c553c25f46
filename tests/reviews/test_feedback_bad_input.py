"""The feedback editor under hostile or unlucky input: a message, the typed text kept, nothing half-stored."""

import time

import pytest
from django.urls import reverse

from loopsite.models import AuditEvent
from reviews.forms import FeedbackDraft
from reviews.models import Feedback, FeedbackItem

from .builders import form_data, make_cycle, make_feedback, make_run

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "save-status"}
PANEL = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "feedback-panel"}
OBS, CLAIM = "required_observation", "prohibited_claim"
HUGE = "9223372036854775808"


def edit_url(cycle, run):
    return reverse("reviews:feedback-edit", args=[cycle.pk, run.pk])


def approve_url(cycle, run):
    return reverse("reviews:run-approve", args=[cycle.pk, run.pk])


@pytest.fixture
def setup():
    run = make_run()
    return make_cycle(run), run


def long_rows(count: int) -> list[tuple]:
    half = count // 2
    return ([(OBS, f"Observation number {n}: mention the parent account", "", "", "") for n in range(half)]
            + [(CLAIM, f"Do not claim thing number {n}", "", "", "") for n in range(count - half)])


# --- a stale version on the first save ------------------------------------------------------------

def test_a_first_autosave_with_a_stale_version_says_so_and_resets_the_version(client_for, reviewer, setup):
    cycle, run = setup
    response = client_for(reviewer).post(edit_url(cycle, run), form_data(version=5, summary="Typed text"), **HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    assert "Not saved: this form was loaded for version 5" in body
    # The next autosave starts a new draft: the form's version goes back to 0.
    assert 'id="fb-version" value="0" hx-swap-oob="true"' in body
    assert not Feedback.objects.exists() and not AuditEvent.objects.filter(action="feedback.create").exists()
    client_for(reviewer).post(edit_url(cycle, run), form_data(version=0, summary="Typed text"), **HTMX)
    assert Feedback.objects.get().summary == "Typed text"


def test_a_first_save_with_a_stale_version_keeps_the_typed_text_without_htmx(client_for, reviewer, setup):
    cycle, run = setup
    response = client_for(reviewer).post(edit_url(cycle, run), form_data(version=3, summary="Keep this text"))
    assert response.status_code == 200
    body = response.content.decode()
    assert "Not saved: this form was loaded for version 3" in body and "Keep this text" in body
    assert not Feedback.objects.exists()


def test_a_first_submit_with_a_stale_version_keeps_the_panel(client_for, reviewer, setup):
    cycle, run = setup
    response = client_for(reviewer).post(edit_url(cycle, run), form_data(version=2, summary="Mine", op="submit"), **PANEL)
    assert response.status_code == 200
    assert "Not saved" in response.content.decode() and "Mine" in response.content.decode()
    assert not Feedback.objects.exists()


def test_a_first_merged_approval_with_a_stale_version_is_refused_with_a_message(client_for, reviewer, approver, setup):
    cycle, run = setup
    make_feedback(cycle, run, reviewer, status="submitted")
    response = client_for(approver).post(approve_url(cycle, run), form_data(version=4, summary="Merged", op="approve"),
                                         **PANEL)
    assert response.status_code == 200
    assert "Not saved: this form was loaded for version 4" in response.content.decode()
    assert not Feedback.objects.filter(is_merged=True).exists()


def test_feedback_deleted_while_editing_is_saved_again_as_a_new_draft(client_for, reviewer, setup):
    cycle, run = setup
    client = client_for(reviewer)
    client.post(edit_url(cycle, run), form_data(version=0, summary="First"), **HTMX)
    Feedback.objects.all().delete()
    response = client.post(edit_url(cycle, run), form_data(version=1, summary="Second"), **HTMX)
    assert response.status_code == 200 and "Not saved" in response.content.decode()
    assert not Feedback.objects.exists()


# --- numbers out of range -------------------------------------------------------------------------

@pytest.mark.parametrize("line", [HUGE, "-1", "0", "12x", "1e400", "9" * 5000])
def test_a_bad_line_number_is_a_message_naming_the_field(client_for, reviewer, setup, line):
    cycle, run = setup
    rows = [(OBS, "Cite the memo", "", "investment_memo.md", line)]
    response = client_for(reviewer).post(edit_url(cycle, run), form_data(rows=rows, summary="Kept"), **HTMX)
    assert response.status_code == 200
    assert "Line number: enter a whole number from 1 to 10000000." in response.content.decode()
    assert not Feedback.objects.exists()


@pytest.mark.parametrize("version", [HUGE, "-" + HUGE, "x", ""])
def test_a_bad_version_number_is_no_500(client_for, reviewer, setup, version):
    cycle, run = setup
    data = form_data(summary="Kept")
    data["version"] = version
    response = client_for(reviewer).post(edit_url(cycle, run), data, **HTMX)
    assert response.status_code == 200


@pytest.mark.parametrize("op", [f"remove:{HUGE}", f"up:{HUGE}", f"down:-{HUGE}", f"overwrite:{HUGE}", "add:nonsense", "x:y"])
def test_a_bad_row_operation_is_no_500(client_for, reviewer, setup, op):
    cycle, run = setup
    response = client_for(reviewer).post(edit_url(cycle, run), form_data(summary="Kept", op=op), **PANEL)
    assert response.status_code == 200 and "Kept" in response.content.decode()


# --- long feedback --------------------------------------------------------------------------------

def test_500_rows_save_submit_and_approve(client_for, reviewer, approver, setup):
    cycle, run = setup
    rows = long_rows(500)
    client = client_for(reviewer)
    started = time.monotonic()
    response = client.post(edit_url(cycle, run), form_data(rows=rows), **HTMX)
    assert response.status_code == 200 and "Saved." in response.content.decode()
    feedback = Feedback.objects.get()
    assert feedback.items.count() == 500
    response = client.post(edit_url(cycle, run), form_data(version=feedback.version, rows=rows, op="submit"), **PANEL)
    assert response.status_code == 200
    feedback.refresh_from_db()
    assert feedback.status == Feedback.Status.SUBMITTED

    # The approver's merged form starts from all 500 rows and can be posted whole.
    approver_client = client_for(approver)
    page = approver_client.get(approve_url(cycle, run))
    assert page.status_code == 200 and len(page.context["draft"].rows) == 500
    response = approver_client.post(approve_url(cycle, run), form_data(version=0, rows=rows, op="approve"), **PANEL)
    assert response.status_code == 200, response.content.decode()[:500]
    merged = Feedback.objects.get(is_merged=True)
    assert merged.status == Feedback.Status.APPROVED and merged.items.count() == 500
    assert FeedbackItem.objects.filter(feedback=merged, kind=CLAIM).count() == 250
    assert time.monotonic() - started < 30


def test_more_rows_than_the_limit_is_a_message_and_nothing_is_stored(client_for, reviewer, setup, settings):
    cycle, run = setup
    rows = long_rows(FeedbackDraft.MAX_ROWS + 1)
    response = client_for(reviewer).post(edit_url(cycle, run), form_data(rows=rows), **HTMX)
    assert response.status_code == 200
    assert f"the limit is {FeedbackDraft.MAX_ROWS}" in response.content.decode()
    assert not Feedback.objects.exists()


def test_the_field_limit_leaves_room_for_the_longest_feedback(settings):
    fields_per_row = len(FeedbackDraft.FIELDS)
    assert settings.DATA_UPLOAD_MAX_NUMBER_FIELDS >= FeedbackDraft.MAX_ROWS * fields_per_row + 20


def test_too_many_fields_is_a_readable_400_for_the_autosave(client_for, reviewer, setup, settings):
    cycle, run = setup
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 100
    client = client_for(reviewer)
    client.raise_request_exception = False
    response = client.post(edit_url(cycle, run), form_data(rows=long_rows(40)), **HTMX)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert "more than 100 fields" in text and "Your text is still in the form" in text
    assert not Feedback.objects.exists()
    # Without htmx: a page that says the same.
    response = client.post(edit_url(cycle, run), form_data(rows=long_rows(40)))
    assert response.status_code == 400 and "more than 100 fields" in response.content.decode()


def test_the_editor_shows_server_errors_in_the_status_line(client_for, reviewer, setup):
    cycle, run = setup
    page = client_for(reviewer).get(edit_url(cycle, run)).content.decode()
    assert 'addEventListener("htmx:responseError"' in page and 'addEventListener("htmx:sendError"' in page

import pytest
from django.urls import reverse

from loopsite.models import AuditEvent
from reviews.models import Feedback, FeedbackItem

from .builders import form_data, make_cycle, make_feedback, make_run

pytestmark = pytest.mark.django_db

HTMX = {"HTTP_HX_REQUEST": "true"}
OBS = "required_observation"
CLAIM = "prohibited_claim"


def url(cycle, run):
    return reverse("reviews:feedback-edit", args=[cycle.pk, run.pk])


@pytest.fixture
def setup():
    run = make_run()
    return make_cycle(run), run


def test_it_requires_login(client, setup):
    cycle, run = setup
    assert client.get(url(cycle, run)).status_code == 302


def test_outsiders_get_403(client_for, outsider, setup):
    cycle, run = setup
    client = client_for(outsider)
    assert client.get(url(cycle, run)).status_code == 403
    assert client.post(url(cycle, run), form_data(), **HTMX).status_code == 403
    assert not Feedback.objects.exists()


def test_engineers_cannot_write_feedback(client_for, engineer, setup):
    cycle, run = setup
    assert client_for(engineer).post(url(cycle, run), form_data(), **HTMX).status_code == 403


def test_a_run_outside_the_cycle_is_404(client_for, reviewer, setup):
    cycle, _ = setup
    other = make_run()
    assert client_for(reviewer).get(url(cycle, other)).status_code == 404


def test_the_page_shows_the_run_and_an_empty_form(client_for, reviewer, setup):
    cycle, run = setup
    response = client_for(reviewer).get(url(cycle, run))
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="feedback-form"' in body
    assert 'id="trace-panel"' in body
    assert f'data-span-id="{run.spans.get(position=1).span_id}"' in body
    assert 'data-artifact="investment_memo.md"' in body
    assert "Not started" in body
    title = body.split("<title>", 1)[1].split("</title>", 1)[0]
    assert title.startswith(f"Feedback · {run.label}") and "<script" not in title
    assert body.count('document.addEventListener("keydown"') == 1  # the shortcuts are wired once


def test_autosave_creates_the_draft_and_answers_saved(client_for, reviewer, setup):
    cycle, run = setup
    response = client_for(reviewer).post(url(cycle, run), form_data(), **HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    assert 'data-testid="saved"' in body
    assert 'id="fb-version" value="1" hx-swap-oob="true"' in body
    feedback = Feedback.objects.get()
    assert response["HX-Trigger"] == f'{{"feedbackSaved": {{"feedback": {feedback.pk}, "version": 1}}}}'
    assert (feedback.reviewer, feedback.status, feedback.summary, feedback.version) == (
        reviewer, "draft", "Roll up to parent accounts.", 1)
    assert [item.text for item in feedback.items.all()] == ["Mention parent-account concentration"]
    assert AuditEvent.objects.filter(action="feedback.save", object_id=str(feedback.pk)).exists()


def test_autosave_keeps_later_input(client_for, reviewer, setup):
    cycle, run = setup
    client = client_for(reviewer)
    client.post(url(cycle, run), form_data(), **HTMX)
    client.post(url(cycle, run), form_data(version=1, summary="Roll up to Northstar Holdings."), **HTMX)
    feedback = Feedback.objects.get()
    assert feedback.summary == "Roll up to Northstar Holdings."
    assert feedback.version == 2
    page = client.get(url(cycle, run)).content.decode()
    assert "Roll up to Northstar Holdings." in page
    assert 'id="fb-version" value="2"' in page


def test_an_empty_form_saves_nothing(client_for, reviewer, setup):
    cycle, run = setup
    response = client_for(reviewer).post(url(cycle, run), form_data(summary="", theme="", verdict="", rows=()), **HTMX)
    assert response.status_code == 200
    assert not Feedback.objects.exists()


def test_validation_errors_show_inline_and_keep_input(client_for, reviewer, setup):
    cycle, run = setup
    rows = ((OBS, "Cite the hierarchy", "", "investment_memo.md", "0"),)
    client = client_for(reviewer)
    response = client.post(url(cycle, run), form_data(summary="Typed summary", rows=rows), **HTMX)
    body = response.content.decode()
    assert "Not saved: fix the marked fields." in body
    assert 'id="err-row-0" hx-swap-oob="true"><li>Line number: enter a whole number from 1 to 10000000.</li>' in body
    assert "HX-Trigger" not in response
    assert not Feedback.objects.exists()
    # An action that re-renders the form keeps every typed value beside the error.
    response = client.post(url(cycle, run), form_data(summary="Typed summary", rows=rows, op=f"add:{CLAIM}"), **HTMX)
    body = response.content.decode()
    assert "Typed summary" in body
    assert ">Cite the hierarchy</textarea>" in body
    assert "Line number: enter a whole number from 1 to 10000000." in body


def test_submit_requires_complete_feedback_and_keeps_input(client_for, reviewer, setup):
    cycle, run = setup
    client = client_for(reviewer)
    response = client.post(url(cycle, run), form_data(verdict="", rows=((OBS, "", "", "", ""),), op="submit"), **HTMX)
    body = response.content.decode()
    assert "Choose a verdict before submitting." in body
    assert "Write this item or remove the row." in body
    assert "Roll up to parent accounts." in body
    assert not Feedback.objects.filter(status="submitted").exists()


def test_submit_moves_to_submitted(client_for, reviewer, setup):
    cycle, run = setup
    response = client_for(reviewer).post(url(cycle, run), form_data(op="submit"), **HTMX)
    assert response.status_code == 200
    feedback = Feedback.objects.get()
    assert feedback.status == Feedback.Status.SUBMITTED
    assert response["HX-Trigger"] == f'{{"feedbackSubmitted": {{"feedback": {feedback.pk}, "version": 2}}}}'
    body = response.content.decode()
    assert 'data-testid="feedback-readonly"' in body
    assert 'id="feedback-form"' not in body


def test_a_double_submit_loses_nothing(client_for, reviewer, setup):
    cycle, run = setup
    client = client_for(reviewer)
    client.post(url(cycle, run), form_data(op="submit"), **HTMX)
    # The second click carries the same text and the old version.
    response = client.post(url(cycle, run), form_data(op="submit"), **HTMX)
    assert response.status_code == 200
    assert "Already submitted." in response.content.decode()
    feedback = Feedback.objects.get()
    assert (feedback.status, feedback.version) == ("submitted", 2)


def test_a_stale_version_gets_a_conflict_not_an_overwrite(client_for, reviewer, setup):
    cycle, run = setup
    feedback = make_feedback(cycle, run, reviewer, summary="Saved in another tab")
    client = client_for(reviewer)
    response = client.post(url(cycle, run), form_data(version=0, summary="Typed in this tab"), **HTMX)
    body = response.content.decode()
    assert "a newer version of this feedback was saved elsewhere" in body
    assert "Saved in another tab" in body  # the current text is shown
    assert 'value="overwrite:1"' in body
    feedback.refresh_from_db()
    assert feedback.summary == "Saved in another tab"
    # A stale submit does not submit either, and keeps the typed text.
    response = client.post(url(cycle, run), form_data(version=0, summary="Typed in this tab", op="submit"), **HTMX)
    body = response.content.decode()
    assert "Typed in this tab" in body and "Saved in another tab" in body
    feedback.refresh_from_db()
    assert (feedback.status, feedback.summary) == ("draft", "Saved in another tab")
    # Choosing to keep this tab's text saves it over version 1.
    client.post(url(cycle, run), form_data(version=0, summary="Typed in this tab", op="overwrite:1"), **HTMX)
    feedback.refresh_from_db()
    assert (feedback.summary, feedback.version) == ("Typed in this tab", 2)


def test_rows_are_added_in_place(client_for, reviewer, setup):
    cycle, run = setup
    response = client_for(reviewer).post(url(cycle, run), form_data(op=f"add:{CLAIM}"), **HTMX)
    body = response.content.decode()
    assert '<section id="feedback-panel"' in body
    assert 'data-testid="row-1"' in body
    assert "autofocus" in body
    feedback = Feedback.objects.get()
    assert [(i.kind, i.text) for i in feedback.items.all()] == [(OBS, "Mention parent-account concentration"), (CLAIM, "")]


def test_rows_are_removed(client_for, reviewer, setup):
    cycle, run = setup
    rows = ((OBS, "first", "", "", ""), (OBS, "second", "", "", ""), (CLAIM, "claim", "", "", ""))
    client_for(reviewer).post(url(cycle, run), form_data(rows=rows, op="remove:0"), **HTMX)
    assert [(i.kind, i.text) for i in Feedback.objects.get().items.all()] == [(OBS, "second"), (CLAIM, "claim")]


def test_rows_are_reordered_within_their_kind(client_for, reviewer, setup):
    cycle, run = setup
    client = client_for(reviewer)
    rows = ((OBS, "first", "", "", ""), (OBS, "second", "", "", ""), (CLAIM, "claim", "", "", ""))
    response = client.post(url(cycle, run), form_data(rows=rows, op="up:1"), **HTMX)
    assert [i.text for i in Feedback.objects.get().items.all()] == ["second", "first", "claim"]
    body = response.content.decode()
    assert body.index('>second</textarea>') < body.index('>first</textarea>')
    # Moving the last observation down does not cross into the claims.
    rows = ((OBS, "second", "", "", ""), (OBS, "first", "", "", ""), (CLAIM, "claim", "", "", ""))
    client.post(url(cycle, run), form_data(version=1, rows=rows, op="down:1"), **HTMX)
    assert [i.text for i in Feedback.objects.get().items.all()] == ["second", "first", "claim"]


def test_a_span_citation_is_stored_and_linked(client_for, reviewer, setup):
    cycle, run = setup
    span_id = run.spans.get(position=1).span_id
    rows = ((OBS, "Read the hierarchy", span_id, "", ""), (CLAIM, "No legal-entity framing", "", "investment_memo.md", "3"))
    client = client_for(reviewer)
    client.post(url(cycle, run), form_data(rows=rows), **HTMX)
    items = list(Feedback.objects.get().items.all())
    assert (items[0].citation_span_id, items[0].citation_artifact) == (span_id, "")
    assert (items[1].citation_artifact, items[1].citation_line) == ("investment_memo.md", 3)
    page = client.get(url(cycle, run)).content.decode()
    assert f'href="/runs/{run.pk}/#span-{span_id}"' in page
    assert f'href="/runs/{run.pk}/#artifact-investment-memo-md-L3"' in page  # the cited line


def test_a_citation_must_come_from_this_run(client_for, reviewer, setup):
    cycle, run = setup
    rows = ((OBS, "x", "not-a-span", "", ""), (OBS, "y", "", "elsewhere.md", ""))
    body = client_for(reviewer).post(url(cycle, run), form_data(rows=rows), **HTMX).content.decode()
    assert "That span is not in this run&#x27;s trace." in body
    assert "That artifact is not in this run." in body
    assert not FeedbackItem.objects.exists()


def test_reviewers_edit_only_their_own_feedback(client_for, reviewer, reviewer2, setup):
    cycle, run = setup
    theirs = make_feedback(cycle, run, reviewer2, summary="Theirs")
    client_for(reviewer).post(url(cycle, run), form_data(summary="Mine"), **HTMX)
    theirs.refresh_from_db()
    assert theirs.summary == "Theirs"
    assert Feedback.objects.get(reviewer=reviewer).summary == "Mine"


def test_blind_review_hides_others_until_submit(client_for, reviewer, reviewer2, setup):
    cycle, run = setup
    make_feedback(cycle, run, reviewer2, summary="Secret view of rory", status="submitted")
    client = client_for(reviewer)
    page = client.get(url(cycle, run)).content.decode()
    assert "Secret view of rory" not in page
    assert "Blind review" in page
    response = client.post(url(cycle, run), form_data(op="submit"), **HTMX)
    assert "Secret view of rory" in response.content.decode()
    assert "Secret view of rory" in client.get(url(cycle, run)).content.decode()


def test_drafts_of_others_stay_hidden_after_submit(client_for, reviewer, reviewer2, setup):
    cycle, run = setup
    make_feedback(cycle, run, reviewer2, summary="Unfinished draft of rory")
    make_feedback(cycle, run, reviewer, status="submitted")
    assert "Unfinished draft of rory" not in client_for(reviewer).get(url(cycle, run)).content.decode()


def test_sent_back_feedback_shows_the_comment_and_is_editable(client_for, reviewer, approver, setup):
    cycle, run = setup
    feedback = make_feedback(cycle, run, reviewer, status="submitted")
    feedback.send_back(by=approver, comment="Name the parent account.")
    client = client_for(reviewer)
    page = client.get(url(cycle, run)).content.decode()
    assert "Name the parent account." in page
    assert 'id="feedback-form"' in page
    client.post(url(cycle, run), form_data(version=feedback.version + 0, summary="Northstar", op="submit"), **HTMX)
    feedback.refresh_from_db()
    assert (feedback.status, feedback.summary) == ("submitted", "Northstar")


def test_without_htmx_a_save_redirects_back(client_for, reviewer, setup):
    cycle, run = setup
    response = client_for(reviewer).post(url(cycle, run), form_data(op="save"))
    assert response.status_code == 302
    assert response["Location"] == url(cycle, run)
    assert Feedback.objects.get().summary == "Roll up to parent accounts."


def test_an_autosave_never_runs_the_button_that_last_had_focus(client_for, reviewer, setup):
    # htmx adds the last focused submit button's name/value to the form's own requests, so an
    # autosave can arrive carrying op=remove:0; aimed at the status line, it must only save.
    cycle, run = setup
    rows = ((OBS, "first", "", "", ""), (OBS, "second", "", "", ""))
    response = client_for(reviewer).post(
        url(cycle, run), form_data(rows=rows, op="remove:0"), HTTP_HX_TARGET="save-status", **HTMX
    )
    assert 'data-testid="saved"' in response.content.decode()
    assert [i.text for i in Feedback.objects.get().items.all()] == ["first", "second"]


def test_an_incomplete_submit_saves_the_draft_and_says_not_submitted(client_for, reviewer, setup):
    cycle, run = setup
    response = client_for(reviewer).post(
        url(cycle, run), form_data(summary="Half done", verdict="", op="submit"), **HTMX)
    body = response.content.decode()
    assert "Not submitted: fix the marked fields. The draft is saved." in body
    assert "Not saved: fix the marked fields." not in body
    assert "Choose a verdict before submitting." in body
    feedback = Feedback.objects.get()
    assert (feedback.status, feedback.summary) == (Feedback.Status.DRAFT, "Half done")
    assert f'id="fb-version" value="{feedback.version}"' in body


def test_items_are_multi_line_with_the_same_field_names(client_for, reviewer, setup):
    cycle, run = setup
    client = client_for(reviewer)
    text = "Mention parent-account concentration\nand quote the ARR share."
    rows = ((OBS, text, "", "", ""),)
    client.post(url(cycle, run), form_data(rows=rows), **HTMX)
    assert Feedback.objects.get().items.get().text == text
    body = client.get(url(cycle, run)).content.decode()
    assert f'>{text}</textarea>' in body and 'class="fb-item-text"' in body and 'name="item_text"' in body

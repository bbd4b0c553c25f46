"""The review and approval pages: themes under blind review, previous/next, shortcuts, next item after an action."""

import pytest
from django.urls import reverse

from reviews.models import approve_run

from .builders import form_data, make_cycle, make_feedback, make_run

pytestmark = pytest.mark.django_db
HTMX = {"HTTP_HX_REQUEST": "true"}


def edit_url(cycle, run):
    return reverse("reviews:feedback-edit", args=[cycle.pk, run.pk])


def themes_on(response) -> list[str]:
    return response.context["themes"]


def test_theme_suggestions_hide_other_reviewers_drafts(client_for, reviewer, reviewer2, approver, engineer):
    run, other_run, done_run = make_run(), make_run(), make_run()
    cycle = make_cycle(run, other_run, done_run)
    cycle.assign(run=run, reviewer=reviewer, by=engineer)
    make_feedback(cycle, run, reviewer2, theme="rorys_draft_theme")  # unsubmitted, same run
    make_feedback(cycle, other_run, reviewer2, theme="rorys_other_draft")  # unsubmitted, another run
    make_feedback(cycle, other_run, reviewer, theme="ritas_own_theme")  # her own draft
    make_feedback(cycle, done_run, reviewer2, theme="approved_theme", status="submitted")
    approve_run(cycle=cycle, run=done_run, by=approver, version=0,
                content={"summary": "s", "theme": "approved_theme", "verdict": "fail", "items": []})
    response = client_for(reviewer).get(edit_url(cycle, run))
    assert themes_on(response) == ["approved_theme", "ritas_own_theme"]
    body = response.content.decode()
    assert "rorys_draft_theme" not in body and "rorys_other_draft" not in body


def test_a_submitted_theme_stays_hidden_until_the_reviewer_submits(client_for, reviewer, reviewer2, approver, engineer):
    run = make_run()
    cycle = make_cycle(run)
    cycle.assign(run=run, reviewer=reviewer, by=engineer)
    make_feedback(cycle, run, reviewer2, theme="rorys_theme", status="submitted")
    approve_run(cycle=cycle, run=run, by=approver, version=0,
                content={"summary": "s", "theme": "merged_theme", "verdict": "fail", "items": []})
    client = client_for(reviewer)
    assert themes_on(client.get(edit_url(cycle, run))) == []  # assigned, nothing submitted: blind
    make_feedback(cycle, run, reviewer, theme="mine", status="submitted")
    assert themes_on(client.get(edit_url(cycle, run))) == ["merged_theme", "mine", "rorys_theme"]


def test_the_review_page_links_previous_and_next_assigned_runs_and_lists_shortcuts(client_for, reviewer, engineer):
    runs = [make_run(label=f"trace-{n}") for n in (1, 2, 3)]
    cycle = make_cycle(*runs)
    for run in runs:
        cycle.assign(run=run, reviewer=reviewer, by=engineer)
    body = client_for(reviewer).get(edit_url(cycle, runs[1])).content.decode()
    assert f'rel="prev" data-shortcut="previous" href="{edit_url(cycle, runs[0])}"' in body
    assert f'rel="next" data-shortcut="next" href="{edit_url(cycle, runs[2])}"' in body
    assert 'data-testid="shortcuts"' in body and "<kbd>Alt</kbd>+<kbd>N</kbd>" in body and "submit for approval" in body
    last = client_for(reviewer).get(edit_url(cycle, runs[2])).content.decode()
    assert 'rel="next"' not in last
    assert f'data-shortcut="next" href="{reverse("reviews:next-review")}?cycle={cycle.pk}&amp;run={runs[2].pk}"' in last


def test_after_submitting_the_panel_links_the_next_run_to_review(client_for, reviewer, engineer):
    run = make_run()
    cycle = make_cycle(run)
    cycle.assign(run=run, reviewer=reviewer, by=engineer)
    response = client_for(reviewer).post(edit_url(cycle, run), form_data(op="submit"), **HTMX)
    assert response.status_code == 200
    body = response.content.decode()
    assert "Submitted for approval." in body
    assert f'data-testid="next-review" href="{reverse("reviews:next-review")}?cycle={cycle.pk}&amp;run={run.pk}"' in body


def test_after_approving_the_panel_links_the_next_run_to_approve(client_for, reviewer, approver):
    run = make_run()
    cycle = make_cycle(run)
    make_feedback(cycle, run, reviewer, status="submitted")
    url = reverse("reviews:run-approve", args=[cycle.pk, run.pk])
    client = client_for(approver)
    assert 'data-testid="next-approval"' not in client.get(url).content.decode()
    body = client.post(url, form_data(op="approve"), **HTMX).content.decode()
    assert f'data-testid="next-approval" href="{reverse("reviews:next-approval")}?cycle={cycle.pk}&amp;run={run.pk}"' in body


def test_a_decided_proposal_links_the_next_one(client_for, approver):
    from reviews.models import EvalCase
    run = make_run()
    cycle = make_cycle(run)
    case = EvalCase.objects.create(cycle=cycle, eval_id="c1", title="One", expected_behavior="x", source_run=run)
    client = client_for(approver)
    assert 'data-testid="next-proposal"' not in client.get(case.get_absolute_url()).content.decode()
    client.post(reverse("reviews:eval-reject", args=[case.pk]), {"reason": "Duplicate."})
    body = client.get(case.get_absolute_url()).content.decode()
    assert f'data-testid="next-proposal" href="{reverse("reviews:next-proposal")}?after={case.pk}"' in body


def test_without_javascript_approving_ends_on_the_page_that_links_the_next_run(client_for, reviewer, approver):
    first, second = make_run(label="trace-1"), make_run(label="trace-2")
    cycle = make_cycle(first, second)
    for run in (first, second):
        make_feedback(cycle, run, reviewer, status="submitted")
    client = client_for(approver)
    url = reverse("reviews:run-approve", args=[cycle.pk, first.pk])
    response = client.post(url, form_data(op="approve"))  # a plain form post: no HX-Request
    assert response.status_code == 302 and response["Location"] == url
    page = client.get(url).content.decode()
    assert "Feedback on trace-1 approved." in page
    next_link = f'{reverse("reviews:next-approval")}?cycle={cycle.pk}&amp;run={first.pk}'
    assert f'data-testid="next-approval" href="{next_link}"' in page
    followed = client.get(next_link.replace("&amp;", "&"))
    assert followed.status_code == 302
    assert followed["Location"] == reverse("reviews:run-approve", args=[cycle.pk, second.pk])


def test_without_javascript_submitting_ends_on_the_page_that_links_the_next_run(client_for, reviewer, engineer):
    run = make_run()
    cycle = make_cycle(run)
    cycle.assign(run=run, reviewer=reviewer, by=engineer)
    client = client_for(reviewer)
    response = client.post(edit_url(cycle, run), form_data(op="submit"))
    assert response.status_code == 302 and response["Location"] == edit_url(cycle, run)
    page = client.get(edit_url(cycle, run)).content.decode()
    assert "Submitted for approval." in page
    assert f'data-testid="next-review" href="{reverse("reviews:next-review")}?cycle={cycle.pk}&amp;run={run.pk}"' in page

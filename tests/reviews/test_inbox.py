from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from reviews.models import EvalCase, Feedback, GenerationJob
from runs.models import Run

from .builders import make_cycle, make_feedback, make_run

pytestmark = pytest.mark.django_db
URL = reverse("reviews:inbox")


def test_login_lands_on_the_inbox(client, reviewer):
    response = client.post(reverse("login"), {"username": "rita", "password": "pw-rita"}, follow=True)
    assert response.redirect_chain[-1][0] == URL
    assert response.status_code == 200


def test_a_reviewer_sees_assigned_runs_across_cycles_due_work_first(client_for, reviewer, reviewer2, engineer):
    first = [make_run(label=f"alpha-{n}") for n in (1, 2)]
    second = [make_run(label=f"beta-{n}") for n in (1, 2)]
    old, new = make_cycle(*first, name="old cycle"), make_cycle(*second, name="new cycle")
    for cycle, runs in ((old, first), (new, second)):
        for run in runs:
            cycle.assign(run=run, reviewer=reviewer, by=engineer)
    make_feedback(old, first[0], reviewer, status="submitted")
    make_feedback(new, second[1], reviewer)  # a draft: in progress
    unassigned = make_cycle(make_run(label="gamma-1"), name="not mine")
    response = client_for(reviewer).get(URL)
    assert response.status_code == 200
    due = [(item.run.label, item.state) for item in response.context["review_due"]]
    assert due == [("beta-2", "draft"), ("beta-1", "unreviewed"), ("alpha-2", "unreviewed")]
    assert [(item.run.label, item.state) for item in response.context["review_done"]] == [("alpha-1", "submitted")]
    body = response.content.decode()
    assert "In progress" in body and "not mine" not in body and unassigned.name not in body
    assert "inbox-approvals" not in body  # a reviewer has no approval section


def test_a_sent_back_run_comes_first(client_for, reviewer, approver, engineer):
    runs = [make_run(label=f"run-{n}") for n in (1, 2)]
    cycle = make_cycle(*runs)
    for run in runs:
        cycle.assign(run=run, reviewer=reviewer, by=engineer)
    fb = make_feedback(cycle, runs[1], reviewer, status="submitted")
    fb.send_back(by=approver, comment="Cite the spreadsheet.")
    response = client_for(reviewer).get(URL)
    assert [item.state for item in response.context["review_due"]] == ["sent_back", "unreviewed"]
    assert "Sent back to you" in response.content.decode()


def test_next_review_moves_on_across_cycles(client_for, reviewer, engineer):
    a, b = make_run(label="a"), make_run(label="b")
    one, two = make_cycle(a, name="one"), make_cycle(b, name="two")
    one.assign(run=a, reviewer=reviewer, by=engineer)
    two.assign(run=b, reviewer=reviewer, by=engineer)
    client = client_for(reviewer)
    first = client.get(reverse("reviews:next-review"))
    assert first["Location"] == reverse("reviews:feedback-edit", args=[two.pk, b.pk])  # newest cycle first
    after = client.get(reverse("reviews:next-review"), {"cycle": two.pk, "run": b.pk})
    assert after["Location"] == reverse("reviews:feedback-edit", args=[one.pk, a.pk])


def test_next_review_with_nothing_left_returns_to_the_inbox(client_for, reviewer):
    response = client_for(reviewer).get(reverse("reviews:next-review"), {"cycle": "x", "run": "1"}, follow=True)
    assert response.redirect_chain == [(URL, 302)]
    assert "Nothing left to review" in response.content.decode()


def test_an_approver_sees_runs_awaiting_approval_and_proposals(client_for, reviewer, reviewer2, approver, engineer):
    waiting, drafted, approved = make_run(label="waiting"), make_run(label="drafted"), make_run(label="approved")
    cycle = make_cycle(waiting, drafted, approved)
    make_feedback(cycle, waiting, reviewer, status="submitted")
    make_feedback(cycle, waiting, reviewer2, status="submitted")
    make_feedback(cycle, drafted, reviewer)  # a draft is not waiting for anyone
    make_feedback(cycle, approved, reviewer, status="submitted")
    from reviews.models import approve_run
    approve_run(cycle=cycle, run=approved, by=approver, content={"summary": "ok", "theme": "t", "verdict": "pass", "items": []}, version=0)
    case = EvalCase.objects.create(cycle=cycle, eval_id="parent_rollup", title="Roll up to parents",
                                   expected_behavior="Roll up.", source_run=waiting)
    EvalCase.objects.create(cycle=cycle, eval_id="done", title="Decided", expected_behavior="x", source_run=waiting,
                            status=EvalCase.Status.REJECTED)
    response = client_for(approver).get(URL)
    assert [(item.run.label, item.submitted) for item in response.context["approvals"]] == [("waiting", 2)]
    assert response.context["proposals"] == [case]
    next_run = client_for(approver).get(reverse("reviews:next-approval"))
    assert next_run["Location"] == reverse("reviews:run-approve", args=[cycle.pk, waiting.pk])
    next_case = client_for(approver).get(reverse("reviews:next-proposal"))
    assert next_case["Location"] == case.get_absolute_url()
    none_left = client_for(approver).get(reverse("reviews:next-proposal"), {"after": case.pk})
    assert none_left["Location"] == URL


def test_next_approval_skips_runs_the_approver_reviewed(client_for, django_user_model, reviewer):
    from django.contrib.auth.models import Group
    both = django_user_model.objects.create_user(username="bo", password="x")
    for name in ("reviewer", "approver"):
        both.groups.add(Group.objects.get_or_create(name=name)[0])
    own, other = make_run(label="own"), make_run(label="other")
    cycle = make_cycle(own, other)
    make_feedback(cycle, own, both, status="submitted")
    make_feedback(cycle, other, reviewer, status="submitted")
    client = client_for(both)
    items = client.get(URL).context["approvals"]
    assert [(item.run.label, item.own_review) for item in items] == [("other", False), ("own", True)]
    assert client.get(reverse("reviews:next-approval"))["Location"] == reverse("reviews:run-approve", args=[cycle.pk, other.pk])
    after = client.get(reverse("reviews:next-approval"), {"cycle": cycle.pk, "run": other.pk}, follow=True)
    assert after.redirect_chain == [(URL, 302)]


def test_an_engineer_sees_failed_and_stuck_work(client_for, engineer):
    failed, stuck = make_run(label="broken"), make_run(label="stuck")
    Run.objects.filter(pk=failed.pk).update(status=Run.Status.FAILED, last_error="Model endpoint refused the connection.")
    Run.objects.filter(pk=stuck.pk).update(status=Run.Status.RUNNING, started_at=timezone.now() - timedelta(hours=1),
                                           heartbeat_at=timezone.now() - timedelta(hours=1), finished_at=None)
    make_run(label="fine")
    cycle = make_cycle(failed)
    GenerationJob.objects.create(cycle=cycle, kind="insights", status="failed", last_error="Bad JSON from the model.",
                                 finished_at=timezone.now())
    response = client_for(engineer).get(URL)
    problems = {(p.state, p.url) for p in response.context["problems"]}
    assert ("failed", failed.get_absolute_url()) in problems
    assert ("stuck", stuck.get_absolute_url()) in problems
    assert ("failed", reverse("reviews:generation", args=[cycle.pk])) in problems
    assert len(problems) == 3
    body = response.content.decode()
    assert "Model endpoint refused the connection." in body and "Bad JSON from the model." in body
    assert response.context["candidates"] == []


def test_old_failures_drop_out(client_for, engineer):
    run = make_run()
    Run.objects.filter(pk=run.pk).update(status=Run.Status.FAILED, last_error="long ago",
                                         finished_at=timezone.now() - timedelta(days=30))
    assert client_for(engineer).get(URL).context["problems"] == []


def test_a_user_without_a_role_is_told_so(client_for, outsider):
    response = client_for(outsider).get(URL)
    assert response.status_code == 200
    assert 'data-testid="inbox-no-role"' in response.content.decode()


def test_next_links_need_their_role(client_for, engineer, reviewer):
    assert client_for(engineer).get(reverse("reviews:next-review")).status_code == 403
    assert client_for(reviewer).get(reverse("reviews:next-approval")).status_code == 403
    assert client_for(reviewer).get(reverse("reviews:next-proposal"), {"after": "nope"}).status_code == 403


def _your_work(body: str, cycle) -> str:
    row = body.split(f'href="{cycle.get_absolute_url()}"')[1].split("</tr>")[0]
    return row.split('data-testid="your-work">')[1].split("</td>")[0]


def test_the_cycle_list_says_where_you_have_work(client_for, reviewer, reviewer2, engineer, approver):
    mine, other = make_run(label="mine"), make_run(label="other")
    busy, quiet = make_cycle(mine, name="busy"), make_cycle(other, name="quiet")
    busy.assign(run=mine, reviewer=reviewer, by=engineer)
    make_feedback(quiet, other, reviewer2, status="submitted")
    body = client_for(reviewer).get(reverse("reviews:cycle-list")).content.decode()
    assert _your_work(body, busy) == "<strong>1 to review</strong>"
    assert _your_work(body, quiet) == '<span class="muted">—</span>'
    body = client_for(approver).get(reverse("reviews:cycle-list")).content.decode()
    assert _your_work(body, busy) == '<span class="muted">—</span>'
    assert _your_work(body, quiet) == "<strong>1 to approve</strong>"

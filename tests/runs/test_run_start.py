import pytest
from django.urls import reverse

from loopsite.models import AuditEvent
from runs import tasks
from runs.models import Batch, Run

from .ui_builders import make_dataroom, make_harness, make_question

pytestmark = pytest.mark.django_db

URL = reverse("runs:start")


@pytest.fixture
def delayed(monkeypatch):
    """Replace the broker: record the run ids that would have been sent."""
    sent = []
    monkeypatch.setattr(tasks.execute_run, "delay", lambda run_id: sent.append(run_id))
    return sent


@pytest.fixture
def setup_rows():
    draft = make_harness("v002", status="draft")
    promoted = make_harness("v001", status="promoted")
    make_harness("v000", status="retired")
    rooms = [make_dataroom("alpha"), make_dataroom("beta")]
    questions = [make_question("Question one: runway?", is_default=True),
                 make_question("Question two: ARR quality?", is_default=False),
                 make_question("Question three: legal exposure?", is_default=True)]
    return {"draft": draft, "promoted": promoted, "rooms": rooms, "questions": questions}


def test_it_requires_login(client):
    assert client.get(URL).status_code == 302


@pytest.mark.parametrize("role", ["reviewer", "approver", "outsider"])
def test_it_requires_an_engineer(client_for, request, role, setup_rows):
    client = client_for(request.getfixturevalue(role))
    assert client.get(URL).status_code == 403
    response = client.post(URL, {"harness": setup_rows["promoted"].pk, "dataroom": setup_rows["rooms"][0].pk,
                                 "questions": [setup_rows["questions"][0].pk]})
    assert response.status_code == 403
    assert not Run.objects.exists()


def test_the_form_preselects_promoted_harness_first_dataroom_and_defaults(client_for, engineer, setup_rows):
    response = client_for(engineer).get(URL)
    assert response.status_code == 200
    form = response.context["form"]
    assert form["harness"].value() == setup_rows["promoted"].pk
    assert form["dataroom"].value() == setup_rows["rooms"][0].pk
    q1, q2, q3 = setup_rows["questions"]
    assert sorted(form["questions"].value()) == sorted([q1.pk, q3.pk])
    html = response.content.decode()
    assert f'value="{q1.pk}" id="id_questions_0" checked' in html
    assert f'value="{q2.pk}" id="id_questions_1">' in html
    assert "v000" not in html  # retired versions are not offered


def test_get_params_preselect_a_harness_and_dataroom(client_for, engineer, setup_rows):
    response = client_for(engineer).get(URL, {"harness": "v002", "dataroom": setup_rows["rooms"][1].pk})
    form = response.context["form"]
    assert form["harness"].value() == setup_rows["draft"].pk
    assert form["dataroom"].value() == setup_rows["rooms"][1].pk


def test_post_starts_a_batch_and_enqueues_each_run(client_for, engineer, setup_rows, delayed,
                                                    django_capture_on_commit_callbacks):
    q1, _, q3 = setup_rows["questions"]
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client_for(engineer).post(URL, {
            "harness": setup_rows["draft"].pk, "dataroom": setup_rows["rooms"][1].pk, "questions": [q1.pk, q3.pk],
        })
    batch = Batch.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('runs:list')}?batch={batch.pk}"
    runs = list(Run.objects.filter(batch=batch).order_by("pk"))
    assert [r.question_id for r in runs] == [q1.pk, q3.pk]
    assert all(r.status == Run.Status.QUEUED and r.harness == setup_rows["draft"] and r.created_by == engineer for r in runs)
    assert len(callbacks) == 2
    assert delayed == [r.pk for r in runs]
    event = AuditEvent.objects.get(action="batch.start")
    assert event.actor == engineer and event.object_id == str(batch.pk)
    assert event.after["questions"] == [q1.pk, q3.pk]


def test_the_redirect_lands_on_the_batch(client_for, engineer, setup_rows, delayed, django_capture_on_commit_callbacks):
    client = client_for(engineer)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(URL, {"harness": setup_rows["promoted"].pk, "dataroom": setup_rows["rooms"][0].pk,
                                     "questions": [setup_rows["questions"][1].pk]}, follow=True)
    assert response.status_code == 200
    assert len(response.context["runs"]) == 1
    assert "Started 1 run(s) of v001 on alpha." in response.content.decode()


def test_errors_are_inline_and_keep_the_input(client_for, engineer, setup_rows, delayed):
    response = client_for(engineer).post(URL, {"harness": setup_rows["draft"].pk, "dataroom": "99999", "questions": []})
    assert response.status_code == 200
    html = response.content.decode()
    assert "Pick at least one question." in html
    assert "Select a valid choice" in html
    assert f'<option value="{setup_rows["draft"].pk}" selected>' in html
    # The unchecked default questions stay unchecked: the user's input wins over the defaults.
    assert " checked" not in html
    assert not Run.objects.exists() and delayed == []
    assert not AuditEvent.objects.filter(action="batch.start").exists()


def test_a_retired_harness_cannot_be_started(client_for, engineer, setup_rows, delayed):
    from runs.models import Harness

    retired = Harness.objects.get(version="v000")
    response = client_for(engineer).post(URL, {"harness": retired.pk, "dataroom": setup_rows["rooms"][0].pk,
                                               "questions": [setup_rows["questions"][0].pk]})
    assert response.status_code == 200
    assert "Select a valid choice" in response.content.decode()
    assert not Run.objects.exists()

import pytest
from django.urls import reverse

from runs.models import Batch, Run

from .ui_builders import XSS, assert_inert, make_dataroom, make_harness, make_question, make_run

pytestmark = pytest.mark.django_db

URL = reverse("runs:list")
POLL = {"HX-Request": "true", "HX-Target": "run-rows"}


def _run_ids(response):
    return [run.pk for run in response.context["runs"]]


def test_it_requires_login(client):
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_it_requires_a_role(client_for, outsider):
    assert client_for(outsider).get(URL).status_code == 403


def test_it_lists_newest_first_with_the_columns(client_for, reviewer):
    old = make_run(label="trace-old", total_tokens=1234,
                   evidence_coverage={"passed": True}, output_contract={"passed": False, "issues": [{"file": "x"}]})
    new = make_run(label="trace-new")
    response = client_for(reviewer).get(URL)
    assert response.status_code == 200
    assert _run_ids(response) == [new.pk, old.pk]
    html = response.content.decode()
    for text in ("trace-old", old.question.text, old.harness.version, old.dataroom.name, "Succeeded", "1,234", "42.0 s",
                 "evidence ✓", "contract ✗"):
        assert text in html


def test_it_filters_by_harness_dataroom_status_and_batch(client_for, reviewer):
    v1, v2 = make_harness("v001"), make_harness("v002", status="draft")
    room_a, room_b = make_dataroom("a"), make_dataroom("b")
    question = make_question()
    r1 = make_run(harness=v1, dataroom=room_a, question=question)
    r2 = make_run(harness=v2, dataroom=room_a, question=question, status=Run.Status.FAILED)
    r3 = make_run(harness=v2, dataroom=room_b, question=question)
    batch = Batch.objects.create(harness=v2, dataroom=room_b)
    Run.objects.filter(pk=r3.pk).update(batch=batch)
    client = client_for(reviewer)
    assert _run_ids(client.get(URL, {"harness": "v002"})) == [r3.pk, r2.pk]
    assert _run_ids(client.get(URL, {"dataroom": room_a.pk})) == [r2.pk, r1.pk]
    assert _run_ids(client.get(URL, {"status": "failed"})) == [r2.pk]
    assert _run_ids(client.get(URL, {"harness": "v002", "dataroom": room_a.pk})) == [r2.pk]
    response = client.get(URL, {"batch": batch.pk})
    assert _run_ids(response) == [r3.pk]
    assert f"Batch #{batch.pk}" in response.content.decode()


def test_invalid_filter_values_are_ignored(client_for, reviewer):
    run = make_run()
    response = client_for(reviewer).get(URL, {"harness": "nope", "status": "bogus", "batch": "x"})
    assert response.status_code == 200
    assert _run_ids(response) == [run.pk]


def test_the_filter_form_keeps_its_values(client_for, reviewer):
    make_run()
    html = client_for(reviewer).get(URL, {"status": "failed", "harness": "v001"}).content.decode()
    assert '<option value="failed" selected>' in html
    assert '<option value="v001" selected>' in html


def test_it_paginates_and_keeps_the_querystring(client_for, reviewer):
    runs = [make_run(status=Run.Status.FAILED) for _ in range(27)]
    client = client_for(reviewer)
    first = client.get(URL, {"status": "failed"})
    assert len(_run_ids(first)) == 25
    assert "Page 1 of 2" in first.content.decode()
    assert 'href="?status=failed&amp;page=2"' in first.content.decode()
    second = client.get(URL, {"status": "failed", "page": 2})
    assert _run_ids(second) == [runs[1].pk, runs[0].pk]


def test_the_list_is_one_query_whatever_the_number_of_runs(client_for, reviewer, django_assert_num_queries):
    for _ in range(12):
        make_run()
    client = client_for(reviewer)
    client.get(URL)
    # session + user + roles + count + page + the three filter dropdowns (agent, harness, dataroom)
    with django_assert_num_queries(8):
        client.get(URL)
    for _ in range(12):
        make_run()
    with django_assert_num_queries(8):
        client.get(URL)


def test_active_runs_make_the_body_poll(client_for, reviewer):
    make_run(status=Run.Status.QUEUED)
    html = client_for(reviewer).get(URL, {"status": "queued"}).content.decode()
    assert '<tbody id="run-rows" hx-get="/runs/?status=queued" hx-trigger="every 2s" hx-swap="outerHTML">' in html


def test_the_polled_fragment_is_the_body_only(client_for, reviewer):
    make_run(status=Run.Status.RUNNING)
    response = client_for(reviewer).get(URL, headers=POLL)
    assert response.status_code == 200
    body = response.content.decode().strip()
    assert body.startswith('<tbody id="run-rows"') and body.endswith("</tbody>")
    assert 'hx-trigger="every 2s"' in body


def test_polling_stops_when_nothing_is_active(client_for, reviewer):
    run = make_run(status=Run.Status.RUNNING)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED)
    response = client_for(reviewer).get(URL, headers=POLL)
    assert response.status_code == 286
    body = response.content.decode()
    assert "Succeeded" in body
    assert "hx-trigger" not in body


def test_finished_runs_do_not_poll(client_for, reviewer):
    make_run()
    assert "every 2s" not in client_for(reviewer).get(URL).content.decode()


def test_question_text_is_escaped(client_for, reviewer):
    make_run(question=make_question(XSS))
    html = client_for(reviewer).get(URL).content.decode()
    assert_inert(html)
    assert "&lt;script&gt;" in html


def test_start_button_only_for_engineers(client_for, reviewer, engineer):
    start = reverse("runs:start")
    assert f'href="{start}"' not in client_for(reviewer).get(URL).content.decode()
    assert f'href="{start}"' in client_for(engineer).get(URL).content.decode()

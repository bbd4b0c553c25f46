import pytest
from django.urls import reverse

from runs.models import Run

from .ui_builders import XSS, assert_inert, make_harness, make_run

pytestmark = pytest.mark.django_db


def test_pages_require_login(client):
    harness = make_harness()
    for url in (reverse("runs:harness-list"), harness.get_absolute_url()):
        assert client.get(url).status_code == 302


def test_pages_require_a_role(client_for, outsider):
    harness = make_harness()
    assert client_for(outsider).get(reverse("runs:harness-list")).status_code == 403
    assert client_for(outsider).get(harness.get_absolute_url()).status_code == 403


def test_the_list_shows_version_status_parent_and_runs(client_for, reviewer, django_assert_max_num_queries):
    v1 = make_harness("v001")
    v2 = make_harness("v002", status="draft", parent=v1)
    make_run(harness=v2)
    make_run(harness=v2)
    client = client_for(reviewer)
    client.get(reverse("runs:harness-list"))
    with django_assert_max_num_queries(6):  # session, user, roles, versions, gate pass rates, the agent filter
        response = client.get(reverse("runs:harness-list"))
    html = response.content.decode()
    assert [(h.version, h.run_count) for h in response.context["harnesses"]] == [("v002", 2), ("v001", 0)]
    assert f'href="{v1.get_absolute_url()}" class="mono">v001</a></td>' in html  # v002's parent
    assert 'href="/runs/?harness=v002">2</a>' in html
    assert "Draft" in html and "Promoted" in html


def test_the_detail_shows_the_config_pretty_and_its_runs(client_for, reviewer):
    v1 = make_harness("v001", system_prompt="Cite every claim.", model_settings={"agent_model": "gpt-x", "temperature": 0},
                      tool_policy={"required_artifacts": ["summary_answer.md"]}, eval_metadata={"suite": "core"})
    child = make_harness("v002", status="draft", parent=v1)
    run = make_run(harness=v1, status=Run.Status.FAILED)
    response = client_for(reviewer).get(v1.get_absolute_url())
    assert response.status_code == 200
    html = response.content.decode()
    assert "Cite every claim." in html
    assert "{\n  &quot;agent_model&quot;: &quot;gpt-x&quot;,\n  &quot;temperature&quot;: 0\n}" in html
    assert "&quot;suite&quot;: &quot;core&quot;" in html
    assert "Config version: `v001`" in html  # assembled instructions
    assert run.get_absolute_url() in html
    assert child.get_absolute_url() in html
    assert "1 failed" in html


def test_engineers_get_a_start_link(client_for, reviewer, engineer):
    v1 = make_harness("v001")
    link = f'{reverse("runs:start")}?harness=v001'
    assert link not in client_for(reviewer).get(v1.get_absolute_url()).content.decode()
    assert link in client_for(engineer).get(v1.get_absolute_url()).content.decode()


def test_an_unknown_version_is_404(client_for, reviewer):
    assert client_for(reviewer).get(reverse("runs:harness-detail", args=["v999"])).status_code == 404


def test_the_prompt_is_escaped(client_for, reviewer):
    harness = make_harness("v001", system_prompt=XSS, tool_policy={"note": XSS})
    html = client_for(reviewer).get(harness.get_absolute_url()).content.decode()
    assert_inert(html)
    assert "&lt;script&gt;" in html

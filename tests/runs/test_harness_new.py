import json

import pytest
from django.urls import reverse

from loopsite.models import AuditEvent
from runs import harness_views
from runs.models import Harness

from .ui_builders import XSS, assert_inert, make_harness, make_run

pytestmark = pytest.mark.django_db

POLICY = {"shell": "read-only", "required_artifacts": ["summary_answer.md"]}


@pytest.fixture
def parent():
    return make_harness("v001", system_prompt="You are a diligence analyst.\nCite every claim.",
                        tool_policy=POLICY, model_settings={"agent_model": "gpt-test", "reasoning_effort": "medium",
                                                            "api": "chat_completions"},
                        eval_metadata={"version": "v001", "status": "promoted", "description": "Baseline"})


def url(version="v001"):
    return reverse("runs:harness-new", args=[version])


def form_data(**overrides):
    data = {"version": "v002", "note": "", "system_prompt": "You are a diligence analyst.\nCite every claim.\nBe brief.",
            "tool_policy": json.dumps(POLICY), "agent_model": "gpt-test", "reasoning_effort": "high",
            "handoff_markdown": "", "drafted": "", "action": "save"}
    data.update(overrides)
    return data


def test_it_requires_login(client, parent):
    assert client.get(url()).status_code == 302


@pytest.mark.parametrize("role", ["reviewer", "approver", "outsider"])
def test_it_requires_an_engineer(client_for, request, role, parent):
    client = client_for(request.getfixturevalue(role))
    assert client.get(url()).status_code == 403
    assert client.post(url(), form_data()).status_code == 403
    assert not Harness.objects.filter(version="v002").exists()


def test_an_unknown_parent_is_404(client_for, engineer):
    assert client_for(engineer).get(url("v404")).status_code == 404


def test_the_editor_starts_from_the_parent(client_for, engineer, parent):
    response = client_for(engineer).get(url())
    assert response.status_code == 200
    form = response.context["form"]
    assert form["version"].value() == "v002"
    assert form["system_prompt"].value() == parent.system_prompt
    assert json.loads(form["tool_policy"].value()) == POLICY
    assert (form["agent_model"].value(), form["reasoning_effort"].value()) == ("gpt-test", "medium")
    html = response.content.decode()
    assert 'data-testid="draft-from-handoff"' in html
    assert "none stored for v001; paste one" in html


def test_saving_creates_an_audited_draft_child(client_for, engineer, parent):
    response = client_for(engineer).post(url(), form_data(note="Be brief"))
    child = Harness.objects.get(version="v002")
    assert response.status_code == 302 and response["Location"] == child.get_absolute_url()
    assert (child.parent, child.author, child.status) == (parent, engineer, "draft")
    assert child.system_prompt.endswith("Be brief.")
    assert child.tool_policy == POLICY
    # The two edited settings change; the parent's other keys are kept.
    assert child.model_settings == {"agent_model": "gpt-test", "reasoning_effort": "high", "api": "chat_completions"}
    assert child.eval_metadata["description"] == "Be brief" and child.eval_metadata["parent_version"] == "v001"
    event = AuditEvent.objects.get(action="harness.create")
    assert event.actor == engineer and event.after["tool_policy"] == POLICY
    assert Harness.objects.get(pk=parent.pk).system_prompt == parent.system_prompt  # the parent is untouched


def test_empty_settings_are_removed(client_for, engineer, parent):
    client_for(engineer).post(url(), form_data(agent_model="", reasoning_effort=""))
    assert Harness.objects.get(version="v002").model_settings == {"api": "chat_completions"}


@pytest.mark.parametrize("policy, as_typed, message", [
    ('{"shell": "read-only",}', "{&quot;shell&quot;: &quot;read-only&quot;,}",
     "Not valid JSON: Expecting property name enclosed in double quotes at line 1, column 23."),
    ('["a list"]', "[&quot;a list&quot;]", "The tool policy must be a JSON object ({...}), not a list."),
])
def test_a_bad_policy_shows_the_error_and_keeps_the_input(client_for, engineer, parent, policy, as_typed, message):
    response = client_for(engineer).post(url(), form_data(tool_policy=policy, system_prompt="My edited prompt"))
    assert response.status_code == 200
    html = response.content.decode()
    assert f'<ul class="errorlist"><li>{message}</li></ul>' in html
    assert f"{as_typed}</textarea>" in html
    assert "My edited prompt</textarea>" in html
    assert not Harness.objects.filter(version="v002").exists()


@pytest.mark.parametrize("label, message", [
    ("v001", "Version v001 already exists; labels are unique."),
    ("diff", "is reserved by the harness pages"),
    ("v 2", "Use 1 to 40 letters, digits"),
])
def test_the_label_must_be_unique_and_usable(client_for, engineer, parent, label, message):
    response = client_for(engineer).post(url(), form_data(version=label))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert Harness.objects.count() == 1


def test_the_default_label_skips_taken_ones(client_for, engineer, parent):
    make_harness("v002", status="draft", parent=parent)
    assert client_for(engineer).get(url()).context["form"]["version"].value() == "v003"


def test_preview_diff_answers_htmx_with_the_escaped_diff(client_for, engineer, parent):
    response = client_for(engineer).post(
        url(), form_data(action="preview", system_prompt=parent.system_prompt + "\n" + XSS),
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html and 'id="diff-panel"' in html
    assert_inert(html)
    assert '<span class="diff-add">+' + XSS.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;").replace("'", "&#x27;") in html
    assert '<span class="diff-del">-- Config version: `v001`.</span>' in html  # assembled instructions
    assert '<span class="diff-add">+- Config version: `v002`.</span>' in html
    assert "<h3>Model settings <span" in html and '+  &quot;reasoning_effort&quot;: &quot;high&quot;' in html
    assert "<h3>Tool policy <span class=\"muted small\">no change</span></h3>" in html
    assert not Harness.objects.filter(version="v002").exists()


def test_preview_without_htmx_renders_the_page(client_for, engineer, parent):
    response = client_for(engineer).post(url(), form_data(action="preview"))
    html = response.content.decode()
    assert response.status_code == 200 and "<html" in html and "+Be brief." in html


def test_the_handoff_panel_opens_with_the_stored_handoff(client_for, engineer, parent, monkeypatch):
    monkeypatch.setattr(harness_views, "latest_handoff_for",
                        lambda harness: "## Top 3 changes to implement first\n\n1. **Roll up** <b>now</b>")
    response = client_for(engineer).get(url())
    html = response.content.decode()
    assert "HALO's latest for v001" in html
    assert '<div class="markdown handoff-view"><h2>Top 3 changes to implement first</h2>' in html
    assert "&lt;b&gt;now&lt;/b&gt;" in html and "<b>now</b>" not in html
    assert response.context["form"]["handoff_markdown"].value().startswith("## Top 3 changes")


# --- editing a draft ---------------------------------------------------------------------------------


def test_a_draft_without_runs_can_be_edited(client_for, engineer, parent):
    draft = make_harness("v002", status="draft", parent=parent)
    response = client_for(engineer).post(reverse("runs:harness-edit", args=["v002"]),
                                         form_data(version="ignored", system_prompt="Edited draft."))
    assert response.status_code == 302
    draft.refresh_from_db()
    assert draft.system_prompt == "Edited draft." and draft.version == "v002"
    assert AuditEvent.objects.filter(action="harness.edit", object_id=str(draft.pk)).exists()


@pytest.mark.parametrize("method", ["get", "post"])
def test_editing_a_version_with_runs_is_refused_with_a_message(client_for, engineer, parent, method):
    draft = make_harness("v002", status="draft", parent=parent, system_prompt="Ran once.")
    make_run(harness=draft)
    client = client_for(engineer)
    response = getattr(client, method)(reverse("runs:harness-edit", args=["v002"]), form_data(system_prompt="Changed."),
                                       follow=True)
    assert response.redirect_chain[-1][0] == reverse("runs:harness-new", args=["v002"])
    assert "Harness v002 already has runs, so it cannot be edited. Create a new version from it instead." in (
        response.content.decode())
    assert Harness.objects.get(pk=draft.pk).system_prompt == "Ran once."


def test_the_stored_handoff_is_the_newest_successful_halo_run_of_the_parent(client_for, engineer, parent):
    from datetime import timedelta

    from django.utils import timezone

    from reviews.models import Cycle, Optimization
    from runs.handoffs import latest_handoff_for

    assert latest_handoff_for(parent) is None
    other = make_harness("v000", status="retired")
    now = timezone.now()
    cycle = Cycle.objects.create(harness=parent, name="c1")
    Optimization.objects.create(cycle=cycle, status="succeeded", handoff="## Executive summary\n\nOlder.",
                                finished_at=now - timedelta(hours=2))
    Optimization.objects.create(cycle=cycle, status="succeeded", handoff="## Executive summary\n\nNewest.",
                                finished_at=now - timedelta(hours=1))
    Optimization.objects.create(cycle=cycle, status="failed", handoff="## Executive summary\n\nFailed.", finished_at=now)
    Optimization.objects.create(cycle=Cycle.objects.create(harness=other, name="c0"), status="succeeded",
                                handoff="## Executive summary\n\nOther version.", finished_at=now)
    assert latest_handoff_for(parent) == "## Executive summary\n\nNewest."
    html = client_for(engineer).get(url()).content.decode()
    assert "HALO's latest for v001" in html and "<p>Newest.</p>" in html


def test_the_prompt_is_stored_with_plain_newlines(client_for, engineer, parent):
    # Browsers post textareas with CRLF; a child must differ from its parent only where it was edited.
    client_for(engineer).post(url(), form_data(system_prompt="You are a diligence analyst.\r\nCite every claim.\r\n"))
    assert Harness.objects.get(version="v002").system_prompt == "You are a diligence analyst.\nCite every claim."

"""Draft from handoff: the stand-in's readable rules, the model call with its one repair, the task (HarnessDraft)
that runs it in the worker, and the editor that polls it and takes the proposal in."""

import html as html_lib
import json
import re

import pytest
from django.conf import settings
from django.urls import reverse

from loopsite.models import AuditEvent
from loopsite.standin import harness_drafter
from loopsite.standin.rules import (
    CERTIFICATION_PRECISION, PARENT_ACCOUNT_ROLLUP, SOURCE_OF_TRUTH_METRICS, UNVALIDATED_ESTIMATES, active_rule_ids,
)
from reviews.validation import SchemaError
from django_htmx.http import HttpResponseStopPolling

from runs.handoffs import DraftError, draft_from_handoff, request_draft, validate_proposal
from runs.models import Harness, HarnessDraft
from runs.tasks import draft_harness
from tests.fixtures_worker import wait_for

from .ui_builders import make_harness

SAMPLE = json.loads((settings.BASE_DIR / "runs" / "sample" / "harness_v001.json").read_text(encoding="utf-8"))

# A small handoff in HALO's shape. Its top three changes name two rules: parent-account rollup
# (by title, with its sentence quoted) and certification precision (sentence quoted; rule_id in the
# JSON). Two other rules appear only outside the top three: rank 4 in the table and the JSON, and
# the detailed recommendations. Those must not be added.
HANDOFF = f"""## Executive summary

Harness `v001` misses parent-account exposure and repeats sales wording about SOC 2.

## Top 3 changes to implement first

1. **Add to the prompt: {PARENT_ACCOUNT_ROLLUP.title}.** The harness prompt does not state this rule.
   Add this sentence to the system prompt: "{PARENT_ACCOUNT_ROLLUP.sentence}"
   Evidence: human feedback (trace-02), failing gate row `concentration-parent`.
2. **Stop repeating sales wording about certifications.** Reviewers flagged "SOC 2 complete".
   Add this sentence to the system prompt: “{CERTIFICATION_PRECISION.sentence}”
3. **Keep the approved evals as the regression suite.** Run them on every candidate.

## Ranked recommendation table

| Rank | Recommendation | Impact |
| ---: | --- | --- |
| 1 | Add to the prompt: {PARENT_ACCOUNT_ROLLUP.title} | High |
| 2 | Stop repeating sales wording about certifications | High |
| 3 | Keep the approved evals as the regression suite | Medium |
| 4 | Add to the prompt: {UNVALIDATED_ESTIMATES.title} | Medium |

## Detailed recommendations

Later, consider rule `source_of_truth_metrics` ({SOURCE_OF_TRUTH_METRICS.title}):

> {SOURCE_OF_TRUTH_METRICS.sentence}

## Machine-readable summary

```json
{json.dumps({"top_priorities": [
    {"rank": 1, "title": f"Add to the prompt: {PARENT_ACCOUNT_ROLLUP.title}", "kind": "add_prompt_sentence",
     "rule_id": "parent_account_rollup", "prompt_sentence": PARENT_ACCOUNT_ROLLUP.sentence},
    {"rank": 2, "title": "Stop repeating sales wording about certifications", "kind": "add_prompt_sentence",
     "rule_id": "certification_precision", "prompt_sentence": None},
    {"rank": 3, "title": "Keep the approved evals as the regression suite", "kind": "regression_suite",
     "rule_id": None, "prompt_sentence": None},
    {"rank": 4, "title": f"Add to the prompt: {UNVALIDATED_ESTIMATES.title}", "kind": "add_prompt_sentence",
     "rule_id": "unvalidated_estimates", "prompt_sentence": UNVALIDATED_ESTIMATES.sentence},
]}, indent=2)}
```
"""

EXPECTED_PROMPT = (
    SAMPLE["system_prompt"] + "\n\nDiligence rules:\n"
    f"- {PARENT_ACCOUNT_ROLLUP.sentence}\n- {CERTIFICATION_PRECISION.sentence}"
)


# --- the stand-in's rules (no HTTP) ------------------------------------------------------------------


def test_the_drafter_adds_exactly_the_rules_named_in_the_top_changes():
    result = harness_drafter.draft({"system_prompt": SAMPLE["system_prompt"], "tool_policy": SAMPLE["tool_policy"]},
                                   HANDOFF)
    assert result["system_prompt"] == EXPECTED_PROMPT
    assert result["tool_policy"] == SAMPLE["tool_policy"]
    assert active_rule_ids(result["system_prompt"]) == {"parent_account_rollup", "certification_precision"}
    assert "`parent_account_rollup`" in result["rationale"] and "`certification_precision`" in result["rationale"]
    assert "unvalidated" not in result["rationale"] and "source_of_truth" not in result["rationale"]
    assert "Left for an engineer (no known rule): Keep the approved evals as the regression suite." in result["rationale"]


def test_a_rule_the_prompt_states_is_not_added_twice_and_the_heading_is_reused():
    prompt = f"Be careful.\n\nDiligence rules:\n- {PARENT_ACCOUNT_ROLLUP.sentence}\n\nOutput rules:\n- Write files."
    result = harness_drafter.draft({"system_prompt": prompt, "tool_policy": {}}, HANDOFF)
    assert result["system_prompt"] == (
        f"Be careful.\n\nDiligence rules:\n- {PARENT_ACCOUNT_ROLLUP.sentence}\n- {CERTIFICATION_PRECISION.sentence}"
        "\n\nOutput rules:\n- Write files."
    )
    assert "Already stated in the prompt, left as is: `parent_account_rollup`." in result["rationale"]


def test_the_machine_readable_priorities_alone_name_rules():
    handoff = "## Machine-readable summary\n\n```json\n" + json.dumps({"top_priorities": [
        {"rank": 1, "title": "Fix headline metrics", "rule_id": "source_of_truth_metrics"},
        {"rank": 2, "title": "Estimates", "rule_id": None, "prompt_sentence": UNVALIDATED_ESTIMATES.sentence},
    ]}) + "\n```\n"
    result = harness_drafter.draft({"system_prompt": "Base.", "tool_policy": {}}, handoff)
    assert result["system_prompt"] == (
        f"Base.\n\nDiligence rules:\n- {SOURCE_OF_TRUTH_METRICS.sentence}\n- {UNVALIDATED_ESTIMATES.sentence}"
    )


def test_a_handoff_naming_no_rule_leaves_the_prompt_alone():
    handoff = "## Top 3 changes to implement first\n\n1. **Write shorter memos.**\n\n## Ranked recommendation table\n"
    result = harness_drafter.draft({"system_prompt": "Base.", "tool_policy": {"a": 1}}, handoff)
    assert (result["system_prompt"], result["tool_policy"]) == ("Base.", {"a": 1})
    assert result["rationale"].startswith("No rule sentence added")


# --- validating a proposal -----------------------------------------------------------------------------


def test_a_proposal_must_have_a_prompt_a_policy_object_and_a_rationale():
    assert validate_proposal({"system_prompt": "P", "tool_policy": '{"a": 1}', "rationale": "r"}) == {
        "system_prompt": "P", "tool_policy": {"a": 1}, "rationale": "r"}
    with pytest.raises(SchemaError, match="`system_prompt` must be a non-empty string; `tool_policy` must be a JSON object"):
        validate_proposal({"system_prompt": " ", "tool_policy": [1], "rationale": ""})
    with pytest.raises(SchemaError, match="Expected a JSON object"):
        validate_proposal(["no"])


# --- the model call, through the stand-in over HTTP ------------------------------------------------------


def test_drafting_through_the_standin_records_model_and_endpoint(standin):
    proposal = draft_from_handoff(version="v002", system_prompt=SAMPLE["system_prompt"],
                                  tool_policy=SAMPLE["tool_policy"], handoff=HANDOFF)
    assert proposal.system_prompt == EXPECTED_PROMPT
    assert proposal.tool_policy == SAMPLE["tool_policy"]
    assert (proposal.model_name, proposal.endpoint, proposal.used_standin) == (settings.OPENAI_ANALYSIS_MODEL, standin, True)


def test_one_repair_request_fixes_bad_json(standin_broken_once):
    proposal = draft_from_handoff(version="v002", system_prompt="Base.", tool_policy={}, handoff=HANDOFF)
    assert proposal.system_prompt.startswith("Base.\n\nDiligence rules:\n")


def test_bad_json_after_the_repair_is_a_clear_error(standin_broken):
    with pytest.raises(DraftError) as excinfo:
        draft_from_handoff(version="v002", system_prompt="Base.", tool_policy={}, handoff=HANDOFF)
    assert "was not usable: Invalid JSON" in str(excinfo.value)
    assert "asked once to correct it" in str(excinfo.value)
    assert "=== output after the repair request ===" in excinfo.value.raw_output


def test_an_empty_handoff_is_refused_before_any_call():
    with pytest.raises(DraftError, match="There is no handoff to draft from"):
        draft_from_handoff(version="v002", system_prompt="Base.", tool_policy={}, handoff="  ")


# --- the editor --------------------------------------------------------------------------------------------


@pytest.fixture
def v001(db):
    return make_harness("v001", system_prompt=SAMPLE["system_prompt"], tool_policy=SAMPLE["tool_policy"],
                        model_settings=SAMPLE["model_settings"], eval_metadata=SAMPLE["eval_metadata"])


def editor_data(**overrides):
    data = {"version": "v002", "note": "", "system_prompt": SAMPLE["system_prompt"],
            "tool_policy": json.dumps(SAMPLE["tool_policy"]), "agent_model": "gpt-5.5", "reasoning_effort": "medium",
            "handoff_markdown": HANDOFF, "drafted": "", "action": "draft"}
    data.update(overrides)
    return data


URL = reverse("runs:harness-new", args=["v001"])


def textarea(html: str, name: str) -> str:
    match = re.search(rf'<textarea name="{name}"[^>]*>\n?(.*?)</textarea>', html, flags=re.DOTALL)
    return html_lib.unescape(match.group(1))


def hidden(html: str, name: str) -> str:
    tag = re.search(rf'<input type="hidden" name="{name}"[^>]*>', html).group(0)
    value = re.search(r'value="([^"]*)"', tag)
    return html_lib.unescape(value.group(1)) if value else ""


HTMX = {"HX-Request": "true"}


@pytest.fixture
def no_model_here(monkeypatch):
    """The web request must not call the model: the worker (another process, or .apply()) does."""
    from runs import handoffs

    def refuse(**kwargs):
        raise AssertionError("the model was called inside the web request")

    monkeypatch.setattr(handoffs, "_respond", refuse)


def ask_for_draft(client, **overrides):
    """Click "Draft from handoff": returns (the response, the queued HarnessDraft)."""
    response = client.post(URL, editor_data(**overrides), headers=HTMX)
    assert response.status_code == 200
    return response, HarnessDraft.objects.get()


def status_url(job):
    return reverse("runs:harness-draft", args=[job.base.version, job.pk])


def test_draft_queues_a_task_and_the_editor_polls_its_progress(client_for, engineer, v001, no_model_here,
                                                                  django_capture_on_commit_callbacks):
    client = client_for(engineer)
    with django_capture_on_commit_callbacks() as callbacks:
        response, job = ask_for_draft(client, note="typed by me")
    assert len(callbacks) == 1  # the task is sent once the row is committed
    html = response.content.decode()
    assert "<html" not in html
    assert (job.status, job.base, job.requested_by, job.version) == ("queued", v001, engineer, "v002")
    assert (job.input_prompt, job.input_policy, job.handoff) == (SAMPLE["system_prompt"], SAMPLE["tool_policy"], HANDOFF.strip())
    assert f'hx-get="{status_url(job)}" hx-trigger="every 2s"' in html
    assert 'data-testid="draft-progress">Queued: waiting for a worker.' in html
    assert hidden(html, "draft_job") == str(job.pk)
    assert 'hx-trigger="harnessDraftFinished from:body"' in html
    # What the engineer typed is still in the editor.
    assert textarea(html, "system_prompt") == SAMPLE["system_prompt"]
    assert 'value="typed by me"' in html
    assert not AuditEvent.objects.filter(action="harness.draft").exists()


def test_the_task_stores_the_proposal_and_the_poll_stops(client_for, engineer, v001, standin):
    client = client_for(engineer)
    _, job = ask_for_draft(client)
    assert client.get(status_url(job), headers=HTMX).status_code == 200  # still queued: keep polling
    draft_harness.apply(args=[job.pk])
    job.refresh_from_db()
    assert (job.status, job.attempts, job.last_error) == ("succeeded", 1, "")
    assert job.proposed_prompt == EXPECTED_PROMPT and job.proposed_policy == SAMPLE["tool_policy"]
    assert "`parent_account_rollup`" in job.rationale
    assert (job.model_name, job.endpoint, job.used_standin) == (settings.OPENAI_ANALYSIS_MODEL, standin, True)
    drafted = AuditEvent.objects.get(action="harness.draft")
    assert (drafted.actor, drafted.object_id, drafted.after["draft"]) == (engineer, str(v001.pk), job.pk)
    assert drafted.after["model"] == settings.OPENAI_ANALYSIS_MODEL and drafted.after["endpoint"] == standin

    done = client.get(status_url(job), headers=HTMX)
    assert done.status_code == HttpResponseStopPolling.status_code
    assert json.loads(done["HX-Trigger"]) == {"harnessDraftFinished": {"draft": job.pk, "status": "succeeded"}}
    assert 'hx-trigger="every 2s"' not in done.content.decode()
    draft_harness.apply(args=[job.pk])  # a second delivery does nothing
    job.refresh_from_db()
    assert job.attempts == 1 and AuditEvent.objects.filter(action="harness.draft").count() == 1


def test_the_finished_draft_fills_the_editor_shows_the_diff_and_saves(client_for, engineer, v001, standin):
    client = client_for(engineer)
    _, job = ask_for_draft(client)
    draft_harness.apply(args=[job.pk])
    # harnessDraftFinished: the editor posts itself (as the engineer left it) with action=apply-draft.
    response = client.post(URL, editor_data(action="apply-draft", draft_job=job.pk, note="my note"), headers=HTMX)
    html = response.content.decode()
    assert "<html" not in html and 'data-testid="draft-note"' in html
    assert textarea(html, "system_prompt") == EXPECTED_PROMPT
    assert json.loads(textarea(html, "tool_policy")) == SAMPLE["tool_policy"]
    assert 'value="my note"' in html
    assert f'<span class="diff-add">+- {PARENT_ACCOUNT_ROLLUP.sentence}</span>' in html
    assert '<span class="diff-add">+Diligence rules:</span>' in html
    assert "<h3>Tool policy <span class=\"muted small\">no change</span></h3>" in html
    assert 'hx-trigger="every 2s"' not in html and hidden(html, "draft_job") == ""
    assert not Harness.objects.filter(version="v002").exists()  # nothing saved yet

    saved = client.post(URL, editor_data(system_prompt=textarea(html, "system_prompt"),
                                         tool_policy=textarea(html, "tool_policy"), drafted=hidden(html, "drafted"),
                                         action="save"))
    assert saved.status_code == 302
    child = Harness.objects.get(version="v002")
    assert child.system_prompt == EXPECTED_PROMPT and child.tool_policy == SAMPLE["tool_policy"]
    assert active_rule_ids(child.build_instructions()) == {"parent_account_rollup", "certification_precision"}
    created = AuditEvent.objects.get(action="harness.create")
    assert created.after["drafted_with"]["model"] == settings.OPENAI_ANALYSIS_MODEL
    assert created.summary == "Created harness v002 from v001 (drafted from a handoff)"


def test_edits_made_while_the_draft_ran_are_kept_and_the_proposal_offered(client_for, engineer, v001, standin):
    client = client_for(engineer)
    _, job = ask_for_draft(client)
    draft_harness.apply(args=[job.pk])
    response = client.post(URL, editor_data(action="apply-draft", draft_job=job.pk, system_prompt="Typed meanwhile."),
                           headers=HTMX)
    html = response.content.decode()
    assert textarea(html, "system_prompt") == "Typed meanwhile."
    assert 'data-testid="draft-offered"' in html and 'data-testid="use-draft"' in html
    replaced = client.post(URL, editor_data(action="use-draft", draft_job=job.pk, system_prompt="Typed meanwhile."),
                           headers=HTMX)
    assert textarea(replaced.content.decode(), "system_prompt") == EXPECTED_PROMPT


def test_a_failed_draft_shows_the_reason_and_keeps_the_editor(client_for, engineer, v001, standin_broken):
    client = client_for(engineer)
    _, job = ask_for_draft(client, system_prompt="My own edit.")
    draft_harness.apply(args=[job.pk])
    job.refresh_from_db()
    assert job.status == "failed" and "was not usable" in job.last_error and "=== first output ===" in job.raw_output
    status = client.get(status_url(job), headers=HTMX)
    assert status.status_code == HttpResponseStopPolling.status_code
    assert "Failed: The analysis model&#x27;s proposal was not usable" in status.content.decode()
    response = client.post(URL, editor_data(action="apply-draft", draft_job=job.pk, system_prompt="My own edit."),
                           headers=HTMX)
    html = response.content.decode()
    assert 'data-testid="draft-error"' in html and "was not usable" in html and "Model output" in html
    assert textarea(html, "system_prompt") == "My own edit."
    assert not AuditEvent.objects.filter(action="harness.draft").exists()


def test_a_failed_draft_shows_in_the_engineers_inbox_with_its_page(client_for, engineer, v001, standin_broken):
    _, job = ask_for_draft(client_for(engineer))
    draft_harness.apply(args=[job.pk])
    inbox = client_for(engineer).get(reverse("reviews:inbox"))
    assert inbox.status_code == 200
    body = inbox.content.decode()
    assert f'href="{status_url(job)}"' in body and f"Draft {job.pk} from v001 (failed)" in body


def test_an_unreachable_model_fails_the_draft_with_the_reason(client_for, engineer, v001, settings, refused_url):
    settings.STANDIN_IN_USE, settings.STANDIN_URL = True, refused_url
    _, job = ask_for_draft(client_for(engineer))
    draft_harness.apply(args=[job.pk])
    job.refresh_from_db()
    assert job.status == "failed" and f"The model endpoint {refused_url} failed (APIConnectionError)" in job.last_error


def test_a_draft_of_another_version_is_not_found(client_for, engineer, v001, standin):
    _, job = ask_for_draft(client_for(engineer))
    other = make_harness("v009", status=Harness.Status.DRAFT, system_prompt="x")
    assert client_for(engineer).get(reverse("runs:harness-draft", args=[other.version, job.pk])).status_code == 404
    other_url = reverse("runs:harness-new", args=["v009"])
    response = client_for(engineer).post(other_url, editor_data(action="apply-draft", draft_job=job.pk, version="v010"))
    assert response.status_code == 404


def test_without_htmx_the_draft_page_and_the_check_button_work(client_for, engineer, v001, standin):
    client = client_for(engineer)
    response = client.post(URL, editor_data())
    html = response.content.decode()
    job = HarnessDraft.objects.get()
    assert "<html" in html and 'data-testid="draft-check"' in html  # a submit button: no JavaScript needed
    assert f'<a href="{status_url(job)}">' in html
    page = client.get(status_url(job))
    assert page.status_code == 200 and "Queued: waiting for a worker." in page.content.decode()
    draft_harness.apply(args=[job.pk])
    page = client.get(status_url(job)).content.decode()
    assert "Draft from handoff for <span class=\"mono\">v002</span>" in page
    assert html_lib.unescape(re.search(r'data-testid="proposed-prompt">(.*?)</pre>', page, re.S).group(1)) == EXPECTED_PROMPT
    checked = client.post(URL, editor_data(action="apply-draft", draft_job=job.pk))
    assert checked.context["form"]["system_prompt"].value() == EXPECTED_PROMPT


def test_the_draft_page_polls_for_itself_and_reloads_once_the_draft_has_finished(client_for, engineer, v001, standin):
    client = client_for(engineer)
    _, job = ask_for_draft(client)
    page = client.get(status_url(job)).content.decode()
    assert f'hx-get="{status_url(job)}?on=page" hx-trigger="every 2s"' in page
    polled = client.get(status_url(job) + "?on=page", headers=HTMX).content.decode()
    assert "?on=page" in polled and 'data-testid="draft-check"' not in polled  # no editor button on the page
    draft_harness.apply(args=[job.pk])
    done = client.get(status_url(job) + "?on=page", headers=HTMX)
    assert done.status_code == 200 and done["HX-Refresh"] == "true"  # the page shows the proposal


def test_a_draft_needs_a_valid_policy_first(client_for, engineer, v001, no_model_here):
    response = client_for(engineer).post(URL, editor_data(tool_policy="{oops"))
    html = response.content.decode()
    assert "Fix the errors in the system prompt and tool policy first" in html
    assert "Not valid JSON" in html and "{oops</textarea>" in html
    assert not HarnessDraft.objects.exists()


def test_a_draft_without_a_handoff_says_so(client_for, engineer, v001, no_model_here):
    response = client_for(engineer).post(URL, editor_data(handoff_markdown=""))
    assert "There is no handoff to draft from: paste one into the handoff panel." in response.content.decode()
    assert not HarnessDraft.objects.exists()


def test_reviewers_cannot_ask_for_or_read_drafts(client_for, engineer, reviewer, v001, standin):
    _, job = ask_for_draft(client_for(engineer))
    client = client_for(reviewer)
    assert client.get(status_url(job)).status_code == 403
    assert client.post(URL, editor_data()).status_code == 403


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_drafts_while_the_page_polls(client_for, engineer, standin, celery_worker_factory):
    v001 = make_harness("v001", system_prompt=SAMPLE["system_prompt"], tool_policy=SAMPLE["tool_policy"],
                        model_settings=SAMPLE["model_settings"], eval_metadata=SAMPLE["eval_metadata"])
    client = client_for(engineer)
    _, job = ask_for_draft(client)
    celery_worker_factory(concurrency=1)
    done = wait_for(lambda: (r := client.get(status_url(job), headers=HTMX)).status_code == 286 and r,
                    timeout=60, interval=0.5, message="the draft to finish")
    assert "Done: putting the proposal in the editor" in done.content.decode()
    job.refresh_from_db()
    assert (job.status, job.attempts, job.base) == ("succeeded", 1, v001)
    assert job.progress == "Done: the proposal is in the editor."
    filled = client.post(URL, editor_data(action="apply-draft", draft_job=job.pk), headers=HTMX)
    assert textarea(filled.content.decode(), "system_prompt") == EXPECTED_PROMPT


def test_the_sweep_requeues_a_draft_whose_worker_was_lost(v001, engineer, settings, django_capture_on_commit_callbacks):
    from datetime import timedelta

    from django.utils import timezone

    from loopsite.work import sweep_stale_work

    job = request_draft(base=v001, version="v002", system_prompt="Base.", tool_policy={}, handoff=HANDOFF, user=engineer)
    assert job.claim() == 1
    HarnessDraft.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.WORK_STALE_SECONDS + 5))
    with django_capture_on_commit_callbacks() as callbacks:
        counts = sweep_stale_work()
    assert counts["harness-draft"]["requeued"] == 1 and len(callbacks) == 1
    job.refresh_from_db()
    assert job.status == "queued" and "Worker lost during attempt 1" in job.last_error


def test_the_drafter_reads_the_standin_halo_agents_own_handoff():
    """Four rules fail in the gate; HALO's top three changes name three of them: those three are added."""
    from loopsite.standin import halo_agent

    rows = [
        {"eval_id": "arr-source", "title": "Leads with the finance-controlled ARR bridge as source of truth",
         "explanation": "Led with the board ARR", "passed": False, "label": "trace-01", "trace_id": "a" * 32, "score": 0},
        {"eval_id": "rollup", "title": "Rolls up legal entities to parent accounts",
         "explanation": "Stopped at the legal entity", "passed": False, "label": "trace-02", "trace_id": "b" * 32, "score": 0},
        {"eval_id": "soc2", "title": "States exact SOC 2 certification status",
         "explanation": "Said SOC 2 complete", "passed": False, "label": "trace-03", "trace_id": "c" * 32, "score": 0},
        {"eval_id": "nrr", "title": "Does not report the unvalidated NRR management estimate",
         "explanation": "Reported 122% NRR", "passed": False, "label": "trace-04", "trace_id": "d" * 32, "score": 0},
    ]
    reading = halo_agent.Reading(harness={"version": "v001", "system_prompt": SAMPLE["system_prompt"], "tool_policy": "{}"},
                                 gate_rows=rows, total_traces=4, total_spans=40)
    report = halo_agent.build_report(reading)
    result = harness_drafter.draft({"system_prompt": SAMPLE["system_prompt"], "tool_policy": {}}, report)
    assert active_rule_ids(result["system_prompt"]) == {
        "source_of_truth_metrics", "parent_account_rollup", "certification_precision"}
    assert result["system_prompt"].startswith(SAMPLE["system_prompt"] + "\n\nDiligence rules:\n- ")

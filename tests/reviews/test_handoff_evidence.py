"""The handoff's evidence is checked: citations resolve against the cycle's data and belong to the theme
of the recommendation citing them; "the harness does not state X" is checked against the harness text.
The stand-in HALO agent cites the feedback that is actually about each recommendation."""

import json

from loopsite.standin import halo_agent
from reviews import halo

from . import halo_samples


def context() -> list[dict]:
    return halo.build_context_lines(**halo_samples.context_kwargs())


def feedback_id(label: str, lines: list[dict]) -> str:
    return next(line["attributes"]["feedback.id"] for line in lines
                if line["attributes"].get("optimizer.signal_source") == "human_feedback"
                and line["attributes"]["feedback.trace_label"] == label)


def handoff(top: str, table_rows: list[str] = ()) -> str:
    rows = "\n".join(table_rows)
    return (f"## Executive summary\n\nx\n\n## Top 3 changes to implement first\n\n{top}\n\n"
            "## Ranked recommendation table\n\n| Rank | Recommendation | Impact | Confidence | Implementation effort | "
            f"Evidence | Validation |\n| ---: | --- | --- | --- | --- | --- | --- |\n{rows}\n\n"
            "## Supporting diagnosis and evidence\n\ny\n")


def test_a_fabricated_citation_is_unresolved():
    lines = context()
    checks = halo.check_evidence(lines=lines, handoff=handoff(
        "1. **Roll customer concentration up to parent accounts.** Evidence: [feedback:human-trace-99-1]"))
    [entry] = checks["unresolved"]
    assert entry["citation"] == "[feedback:human-trace-99-1]" and entry["status"] == "missing"
    assert "No feedback with id human-trace-99-1" in entry["reason"]


def test_a_citation_about_another_theme_is_unresolved_and_a_matching_one_resolves():
    lines = context()
    runway, concentration = feedback_id("trace-01", lines), feedback_id("trace-03", lines)
    checks = halo.check_evidence(lines=lines, handoff=handoff(
        f"1. **Roll customer concentration up to parent accounts.** Evidence: [feedback:{runway}] "
        f"[feedback:{concentration}]"))
    statuses = {entry["id"]: entry["status"] for entry in checks["citations"]}
    assert statuses == {runway: "wrong_theme", concentration: "ok"}
    assert [entry["id"] for entry in checks["unresolved"]] == [runway]


def test_gate_eval_and_span_citations_resolve_by_their_ids():
    lines = context()
    row = next(line for line in lines if line["name"] == "eval_gate.result")
    summary = next(line for line in lines if line["name"] == "eval_gate.summary")
    eval_id = row["attributes"]["eval.id"]
    title = row["attributes"]["eval.title"]
    checks = halo.check_evidence(lines=lines, handoff=handoff("", [
        f"| 1 | Fix: {title} | High | High | Low | [gate:{eval_id}] [eval:{eval_id}] | Re-run |",
        f"| 2 | Keep the suite | Medium | High | Low | [span:{summary['span_id']}] [gate:nope] | Re-run |",
    ]))
    assert [(c["citation"], c["status"]) for c in checks["citations"]] == [
        (f"[gate:{eval_id}]", "ok"), (f"[eval:{eval_id}]", "ok"), (f"[span:{summary['span_id']}]", "ok"),
        ("[gate:nope]", "missing")]


def test_a_does_not_state_claim_is_flagged_when_the_harness_states_it():
    lines = context()  # harness v001: "Prefer structured CSV/JSON exports over narrative files when they conflict."
    sentence = ("Treat finance-controlled exports (for example an ARR bridge CSV) as the source of truth for headline "
                "metrics: when a board deck or management narrative reports a different figure, lead with the "
                "finance-controlled figure, cite both sources, and state the conflict explicitly.")
    checks = halo.check_evidence(lines=lines, handoff=handoff(
        f"1. **Add to the prompt: finance exports are the source of truth.** The harness prompt does not state this "
        f"rule.\n   Add this sentence: \"{sentence}\""))
    [claim] = checks["stated_claims"]
    assert "exports over narrative files when they conflict" in claim["harness_sentence"]
    assert "does not state this rule" in claim["claim"]


def test_a_does_not_state_claim_about_a_rule_the_harness_lacks_stands():
    lines = context()
    checks = halo.check_evidence(lines=lines, handoff=handoff(
        "1. **Roll customer concentration up to parent accounts.** The harness prompt does not state this rule.\n"
        "   Add this sentence: \"For customer concentration, roll legal entities up to their parent account and "
        "report the largest parent-account exposure.\""))
    assert checks["stated_claims"] == []
    [uncited] = checks["uncited"]
    assert uncited["recommendation"].startswith("1. Roll customer concentration up to parent accounts.")


def test_the_appendix_lists_what_did_not_resolve():
    checks = {"unresolved": [{"citation": "[feedback:x]", "recommendation": "Do y", "reason": "No feedback with id x."}],
              "stated_claims": [], "uncited": []}
    text = halo.evidence_appendix(checks)
    assert "## Evidence check (added by Loopsite)" in text and "`[feedback:x]` in \"Do y\": No feedback with id x." in text
    assert halo.evidence_appendix({"unresolved": [], "stated_claims": [], "uncited": []}) == ""


def stand_in_report(lines: list[dict]) -> str:
    reading = halo_agent.Reading()
    for line in lines:
        reading.absorb(json.loads(json.dumps(line)))
    return halo_agent.build_report(reading)


def test_the_stand_in_cites_the_feedback_about_each_recommendation_and_every_citation_resolves():
    lines = context()
    report = halo.clean_handoff(stand_in_report(lines))
    checks = halo.check_evidence(lines=lines, handoff=report)
    assert checks["citations"] and checks["unresolved"] == [], checks["unresolved"]
    assert checks["uncited"] == []
    assert checks["stated_claims"] == []
    top = halo.extract_section(report, "## Top 3 changes to implement first")
    cited = {c["id"]: c["recommendation"] for c in checks["citations"] if c["kind"] == "feedback"}
    assert "concentration" in cited[feedback_id("trace-03", lines)].lower()
    assert "certification" in cited[feedback_id("trace-04", lines)].lower()
    # v001 states the source-of-truth preference in other words: the stand-in counts it as stated.
    assert "the prompt already states: Finance-controlled exports are the source of truth for metrics" in report
    assert "Add to the prompt: Finance-controlled exports" not in report
    assert "[feedback:" in top


def test_when_the_revenue_row_fails_the_stand_in_enforces_the_rule_v001_states_in_other_words():
    kwargs = halo_samples.context_kwargs()
    for row in kwargs["gate_rows"]:
        if row["eval_id"] == "eval-arr":
            row.update(passed=False, score=0.0, explanation='Prohibited claim present: "ARR to rely on: $43.0M".')
    lines = halo.build_context_lines(**kwargs)
    report = halo.clean_handoff(stand_in_report(lines))
    checks = halo.check_evidence(lines=lines, handoff=report)
    assert checks["unresolved"] == [] and checks["stated_claims"] == []
    top = halo.extract_section(report, "## Top 3 changes to implement first")
    first = top.split("\n2. ")[0]
    assert "Enforce the existing rule: Finance-controlled exports are the source of truth for metrics" in first
    assert "Prefer structured CSV/JSON exports over narrative files when they conflict" in first
    assert f"[feedback:{feedback_id('trace-02', lines)}]" in first and "[gate:eval-arr]" in first
    assert "does not state" not in first


# --- the handoff page, the download and a real HALO run over a cycle -----------------------------------------

import pytest  # noqa: E402
from django.urls import reverse  # noqa: E402

from reviews.models import Optimization  # noqa: E402
from reviews.tasks import run_optimization_task  # noqa: E402

from .optimization_builders import finished_optimization, halo_cycle, queued_optimization  # noqa: E402

REPORT = """## Executive summary
The gate failed.

## Top 3 changes to implement first
1. **Roll customer concentration up to parent accounts.** Evidence: [feedback:made-up-id] [gate:real-row]

## Ranked recommendation table
| Rank | Recommendation |
|---|---|
| 1 | Parent rollup |
"""
CHECKS = {
    "citations": [
        {"citation": "[feedback:made-up-id]", "kind": "feedback", "id": "made-up-id", "status": "missing",
         "recommendation": "Roll customer concentration up to parent accounts.", "reason": "No feedback with id made-up-id."},
        {"citation": "[gate:real-row]", "kind": "gate", "id": "real-row", "status": "ok",
         "recommendation": "Roll customer concentration up to parent accounts.", "reason": ""},
    ],
    "stated_claims": [{"claim": "The harness prompt does not state this rule", "recommendation": "Prefer exports",
                       "harness_sentence": "Prefer structured CSV/JSON exports over narrative files when they conflict."}],
    "uncited": [{"recommendation": "Parent rollup"}],
}
CHECKS["unresolved"] = [CHECKS["citations"][0]]


@pytest.fixture
def checked(approver):
    optimization = finished_optimization(halo_cycle(approver), REPORT)
    Optimization.objects.filter(pk=optimization.pk).update(evidence_checks=CHECKS)
    optimization.refresh_from_db()
    return optimization


@pytest.mark.django_db
def test_the_handoff_page_shows_unresolved_citations_in_red(client_for, reviewer, checked):
    html = client_for(reviewer).get(reverse("reviews:handoff", args=[checked.pk])).content.decode()
    problems = html[html.index('data-testid="evidence-problems"'):html.index('data-testid="handoff-summary"')]
    assert "1 unresolved citation" in problems and "No feedback with id made-up-id." in problems
    assert "Prefer structured CSV/JSON exports over narrative files when they conflict." in problems
    full = html[html.index('data-testid="handoff-full"'):]
    assert ('<mark class="citation unresolved" data-testid="citation-unresolved" '
            'title="No feedback with id made-up-id.">[feedback:made-up-id]</mark>') in full
    assert '<span class="citation resolved">[gate:real-row]</span>' in full
    assert 'data-testid="uncited"' in html


@pytest.mark.django_db
def test_the_download_lists_unresolved_citations_at_the_end(client_for, engineer, checked):
    response = client_for(engineer).get(reverse("reviews:handoff-download", args=[checked.pk]))
    text = b"".join(response.streaming_content if response.streaming else [response.content]).decode()
    assert text.startswith(checked.handoff.rstrip("\n"))
    tail = text[text.index("## Evidence check (added by Loopsite)"):]
    assert '- `[feedback:made-up-id]` in "Roll customer concentration up to parent accounts.": No feedback' in tail
    assert "Prefer structured CSV/JSON exports over narrative files when they conflict." in tail
    assert "- Parent rollup" in tail


@pytest.mark.django_db
def test_a_clean_handoff_downloads_as_written(client_for, engineer, approver):
    optimization = finished_optimization(halo_cycle(approver), REPORT)
    Optimization.objects.filter(pk=optimization.pk).update(
        evidence_checks={"citations": [], "unresolved": [], "stated_claims": [], "uncited": []})
    response = client_for(engineer).get(reverse("reviews:handoff-download", args=[optimization.pk]))
    assert response.content.decode() == optimization.handoff.rstrip("\n") + "\n"


@pytest.mark.django_db
def test_a_stand_in_halo_run_stores_checked_citations_that_all_resolve(approver, standin, settings):
    cycle = halo_cycle(approver)
    optimization = queued_optimization(cycle, approver)
    run_optimization_task.apply(args=[optimization.pk], throw=True)
    optimization.refresh_from_db()
    assert optimization.status == Optimization.Status.SUCCEEDED, optimization.last_error
    checks = optimization.evidence_checks
    assert len(checks["citations"]) >= 5
    assert checks["unresolved"] == [] and checks["stated_claims"] == [] and checks["uncited"] == []

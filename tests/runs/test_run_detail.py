import json

import pytest
from django.urls import reverse

from runs import display
from runs.models import Run

from .ui_builders import XSS, GOOD_ARTIFACTS, add_artifacts, assert_inert, make_run, small_trace, span_line, store_spans

pytestmark = pytest.mark.django_db


def _page(client, run):
    response = client.get(reverse("runs:detail", args=[run.pk]))
    assert response.status_code == 200
    return response.content.decode()


def _assert_inert(html: str) -> None:
    assert_inert(html)
    assert "<script>alert" not in html
    assert "<img src=x" not in html


def test_it_requires_login(client):
    run = make_run()
    response = client.get(reverse("runs:detail", args=[run.pk]))
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_it_requires_a_role(client_for, outsider):
    run = make_run()
    assert client_for(outsider).get(reverse("runs:detail", args=[run.pk])).status_code == 403


def test_it_404s_for_a_missing_run(client_for, reviewer):
    assert client_for(reviewer).get(reverse("runs:detail", args=[999999])).status_code == 404


def test_it_shows_question_setup_answer_and_usage(client_for, reviewer):
    run = make_run(final_answer="Runway is **11 months**.", model_name="gpt-test", endpoint="http://127.0.0.1:8765/v1",
                   input_tokens=100, output_tokens=50, total_tokens=150, attempts=1)
    html = _page(client_for(reviewer), run)
    assert run.question.text in html
    assert reverse("runs:harness-detail", args=[run.harness.version]) in html
    assert reverse("runs:dataroom-detail", args=[run.dataroom.pk]) in html
    assert "http://127.0.0.1:8765/v1" in html
    assert "<strong>11 months</strong>" in html
    assert "150" in html and "100 in" in html
    assert reverse("runs:trace-jsonl", args=[run.pk]) in html
    assert reverse("runs:artifacts-zip", args=[run.pk]) in html


def test_it_shows_last_error_when_failed(client_for, reviewer):
    run = make_run(status=Run.Status.FAILED, last_error="Traceback: <b>boom</b>")
    html = _page(client_for(reviewer), run)
    assert "Last error" in html
    assert "Traceback: &lt;b&gt;boom&lt;/b&gt;" in html


def test_the_status_partial_polls_while_active(client_for, reviewer):
    run = make_run(status=Run.Status.RUNNING, attempts=1)
    html = _page(client_for(reviewer), run)
    assert 'id="run-status"' in html
    assert 'hx-trigger="every 2s"' in html
    response = client_for(reviewer).get(reverse("runs:detail", args=[run.pk]), headers={"HX-Request": "true", "HX-Target": "run-status"})
    assert response.status_code == 200
    body = response.content.decode()
    assert body.strip().startswith('<div id="run-status"')
    assert 'hx-trigger="every 2s"' in body
    assert "<html" not in body


def test_a_run_waiting_for_a_model_slot_says_so(client_for, reviewer):
    run = make_run(status=Run.Status.RUNNING, attempts=1)
    assert "Waiting for the model" not in _page(client_for(reviewer), run)
    assert run.mark_waiting_for_model(waiting=True, attempt=1)
    response = client_for(reviewer).get(reverse("runs:detail", args=[run.pk]), headers={"HX-Request": "true", "HX-Target": "run-status"})
    body = response.content.decode()
    assert 'data-testid="waiting-for-model"' in body and "Waiting for the model" in body
    assert 'hx-trigger="every 2s"' in body
    assert ">Running<" not in body


def test_a_finished_or_stale_attempt_cannot_mark_the_wait():
    run = make_run(status=Run.Status.RUNNING, attempts=2)
    assert not run.mark_waiting_for_model(waiting=True, attempt=1)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED)
    assert not run.mark_waiting_for_model(waiting=True, attempt=2)
    run.refresh_from_db()
    assert run.waiting_for_model is False and run.status_label == "Succeeded"


def test_the_status_partial_stops_polling_and_refreshes_when_done(client_for, reviewer):
    run = make_run(status=Run.Status.RUNNING)
    Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED)
    response = client_for(reviewer).get(reverse("runs:detail", args=[run.pk]), headers={"HX-Request": "true", "HX-Target": "run-status"})
    assert response.status_code == 286
    assert response["HX-Refresh"] == "true"
    assert "every 2s" not in response.content.decode()


def test_a_finished_run_does_not_poll(client_for, reviewer):
    html = _page(client_for(reviewer), make_run())
    assert "every 2s" not in html


def test_it_renders_each_artifact_by_kind(client_for, reviewer):
    run = make_run()
    add_artifacts(run, GOOD_ARTIFACTS)
    html = _page(client_for(reviewer), run)
    for name in GOOD_ARTIFACTS:
        assert f'data-artifact="{name}"' in html
    assert "<h1>Summary Answer</h1>" in html  # Markdown rendered
    assert '&quot;severity&quot;: &quot;High&quot;' in html  # JSON pretty-printed (indent adds ": ")
    assert "<th>claim_id</th>" in html and "<td>C-001</td>" in html  # CSV as a table


def test_a_missing_artifact_says_so(client_for, reviewer):
    run = make_run()
    add_artifacts(run, {"summary_answer.md": "# Hi"})
    html = _page(client_for(reviewer), run)
    assert 'data-artifact="evidence_table.csv"' in html
    assert "Missing: this run did not write <code>evidence_table.csv</code>" in html


def test_invalid_json_artifact_is_shown_as_stored(client_for, reviewer):
    run = make_run()
    add_artifacts(run, {"risk_register.json": "{not json"})
    html = _page(client_for(reviewer), run)
    assert "Not valid JSON" in html
    assert "{not json" in html


def test_validator_results_list_issues(client_for, reviewer):
    run = make_run(
        evidence_coverage={"passed": False, "supported_claims": [{"claim": "ok"}], "missing_citations": [],
                           "unsupported_claims": [{"claim": "NRR is 130%", "citations": ["nrr.csv"], "issue": "Missing cited file(s): nrr.csv"}]},
        output_contract={"passed": True, "issues": [], "required_files": []},
    )
    html = _page(client_for(reviewer), run)
    assert 'data-validator="evidence-coverage"' in html
    assert "NRR is 130%" in html and "Missing cited file(s): nrr.csv" in html
    assert "1 supported, 1 unsupported, 0 without citations." in html
    assert '<span class="badge badge-fail">failed</span>' in html
    assert '<span class="badge badge-pass">passed</span>' in html


def test_validators_not_run_say_so(client_for, reviewer):
    html = _page(client_for(reviewer), make_run())
    assert html.count('<span class="badge">not run</span>') == 2


def test_the_span_tree_nests_by_parent_in_position_order(client_for, reviewer):
    run = make_run()
    small_trace(run)
    html = _page(client_for(reviewer), run)
    for span_id in ("a1", "l1", "t1", "l2"):
        assert f'data-span-id="{span_id}"' in html
    assert html.index('data-span-id="a1"') < html.index('data-span-id="l1"') < html.index('data-span-id="t1"') < html.index('data-span-id="l2"')
    tree = html[html.index('class="span-tree"'):]
    # The agent's <details> closes after its three children: l1, t1 and l2 are inside it.
    agent_close = tree.index("</details></details>") if "</details></details>" in tree else tree.rindex("</details>")
    assert tree.index('data-span-id="l2"') < agent_close
    assert reverse("runs:span-detail", args=[run.pk, "t1"]) in html
    assert 'hx-trigger="toggle once"' in html
    assert "exec_command" in html and "cat data/financials/p_and_l.csv" in html  # tool name + command preview
    assert "150 tok" in html


def test_build_span_tree_handles_orphans_and_cycles():
    run = make_run()
    spans = store_spans(run, [
        span_line(run, "root"),
        span_line(run, "child", parent="root"),
        span_line(run, "grandchild", parent="child"),
        span_line(run, "orphan", parent="gone"),
        span_line(run, "x", parent="y"),
        span_line(run, "y", parent="x"),
    ])
    tree = display.build_span_tree(spans)
    assert [row.span.span_id for row in tree.rows] == ["root", "child", "grandchild", "orphan", "x", "y"]
    assert [row.depth for row in tree.rows] == [0, 1, 2, 0, 0, 1]
    # Every <details> opened is closed exactly once.
    assert sum(row.closes for row in tree.rows) == len(tree.rows)
    assert [row.closes for row in tree.rows] == [0, 0, 3, 1, 0, 2]


def test_errors_are_highlighted_in_the_tree(client_for, reviewer):
    run = make_run()
    store_spans(run, [span_line(run, "e1", name="function.exec_command", kind="TOOL", error="command failed: exit 2")])
    html = _page(client_for(reviewer), run)
    assert "span-error" in html
    assert "command failed: exit 2" in html
    assert "1 error" in html


def test_agent_answer_html_is_inert(client_for, reviewer):
    run = make_run(final_answer=f"Answer {XSS}")
    html = _page(client_for(reviewer), run)
    _assert_inert(html)
    assert "&lt;script&gt;alert" in html


@pytest.mark.parametrize("name,content", [
    ("summary_answer.md", f"# Title\n\n{XSS}\n\n[link](javascript:alert(1))"),
    ("risk_register.json", json.dumps([{"risk": XSS}])),
    ("evidence_table.csv", f'claim_id,claim\nC-1,"{XSS.replace(chr(34), chr(39))}"\n'),
])
def test_artifact_html_is_inert(client_for, reviewer, name, content):
    run = make_run()
    add_artifacts(run, {name: content})
    html = _page(client_for(reviewer), run)
    _assert_inert(html)
    assert "&lt;script&gt;alert" in html
    assert "href=\"javascript:" not in html


def test_span_names_and_previews_are_inert(client_for, reviewer):
    run = make_run()
    store_spans(run, [span_line(run, "s1", name=f"function.{XSS}", kind="TOOL", error=XSS,
                                attributes={"tool.name": XSS, "input.value": XSS})])
    html = _page(client_for(reviewer), run)
    _assert_inert(html)
    assert "&lt;script&gt;alert" in html


def test_the_page_does_a_fixed_number_of_queries(client_for, reviewer, django_assert_max_num_queries):
    run = make_run()
    add_artifacts(run, GOOD_ARTIFACTS)
    store_spans(run, [span_line(run, f"s{i}", parent="s0" if i else "") for i in range(60)])
    client = client_for(reviewer)
    client.get(reverse("runs:detail", args=[run.pk]))  # warm caches (session, roles)
    with django_assert_max_num_queries(8):
        assert client.get(reverse("runs:detail", args=[run.pk])).status_code == 200


def test_an_active_run_does_not_call_artifacts_missing(client_for, reviewer):
    html = _page(client_for(reviewer), make_run(status=Run.Status.RUNNING))
    assert "Missing: this run did not write" not in html
    assert "Not written yet" in html
    assert "The agent is still working" in html


def test_the_partials_render_alone_with_only_the_run(rf, reviewer):
    """The review page includes these partials with `run` in context (and the tree for span-tree)."""
    from django.template.loader import render_to_string

    run = make_run(final_answer="**Bold** answer")
    add_artifacts(run, GOOD_ARTIFACTS)
    small_trace(run)
    request = rf.get("/")
    request.user = reviewer
    request.htmx = False
    assert "<strong>Bold</strong>" in render_to_string("runs/run_detail.html#answer", {"run": run}, request=request)
    assert 'data-artifact="citations.json"' in render_to_string("runs/run_detail.html#artifacts", {"run": run}, request=request)
    assert 'data-validator="output-contract"' in render_to_string("runs/run_detail.html#validators", {"run": run}, request=request)
    assert 'id="run-status"' in render_to_string("runs/run_detail.html#run-status", {"run": run}, request=request)
    tree = display.span_tree(run)
    with_tree = render_to_string("runs/run_detail.html#span-tree", {"run": run, "span_tree": tree}, request=request)
    without_tree = render_to_string("runs/run_detail.html#span-tree", {"run": run}, request=request)
    assert with_tree == without_tree
    assert with_tree.count("data-span-id=") == 4


def test_token_counts_have_thousands_separators(client_for, reviewer):
    from tests.reviews.builders import make_run as make_review_run

    run = make_review_run(input_tokens=1200000, output_tokens=34567, total_tokens=1234567)
    body = client_for(reviewer).get(run.get_absolute_url()).content.decode()
    assert "1,234,567 <span class=\"muted\">(1,200,000 in · 34,567 out)</span>" in body


def test_a_json_list_of_records_is_a_table(client_for, reviewer):
    run = make_run()
    register = [{"id": "R-001", "risk": "Sub-12-month runway", "severity": "High",
                 "evidence": ["financials/p_and_l.csv", "board_minutes.md"]},
                {"id": "R-002", "risk": "Customer concentration", "owner": {"name": "CFO"}}]
    add_artifacts(run, {"risk_register.json": json.dumps(register)})
    html = _page(client_for(reviewer), run)
    panel = html.split('data-artifact="risk_register.json"')[1].split('class="tab-panel')[0]
    assert "<th>id</th><th>risk</th><th>severity</th><th>evidence</th><th>owner</th>" in panel
    assert "<td>financials/p_and_l.csv; board_minutes.md</td>" in panel
    assert "<td>{&quot;name&quot;: &quot;CFO&quot;}</td>" in panel
    assert "As stored (JSON)" in panel


def test_json_not_shaped_like_a_table_stays_indented_text():
    from runs.display import json_table, render_content

    assert json_table({"a": 1, "b": 2}) == ([], [])
    assert json_table([1, 2]) == ([], [])
    assert json_table({"risks": [{"id": "R-1"}]}) == (["id"], [["R-1"]])
    view = render_content("summary.json", '{"a": 1, "b": [1, 2]}')
    assert view.header == [] and '"a": 1' in view.text

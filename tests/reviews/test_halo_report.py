"""Reading HALO's report: the seven sections, the handoff, named sections, the summary, top priorities; the prompt."""

import json

from reviews import halo

SECTIONS = list(halo.REQUIRED_SECTIONS)


def report(*, preface="I looked at 7 traces. Here is my report.\n\n", sections=None, bodies=None) -> str:
    bodies = bodies or {}
    parts = []
    for heading in sections if sections is not None else SECTIONS:
        parts.append(f"{heading}\n\n{bodies.get(heading, f'Body of {heading[3:]}.')}")
    return preface + "\n\n".join(parts) + "\n"


DETAILED = "\n\n".join(f"{heading}\n\ntext" for heading in halo.DETAILED_SUBHEADINGS)
TOP3 = "1. **Roll up concentration.** Because.\n2. **State SOC 2 status.** Because.\n3. **Keep the evals.** Because."
INSIGHTS = "| Feedback source | Key insights |\n| --- | --- |\n| Human feedback | Roll up to parent accounts. |"
PRIORITIES = {"top_priorities": [{"rank": 1, "rule_id": "parent_account_rollup"}, {"rank": 2, "rule_id": None}]}
MACHINE = "Summary:\n\n```json\n" + json.dumps(PRIORITIES, indent=2) + "\n```"
FULL = report(bodies={
    "## Top 3 changes to implement first": TOP3,
    "## Detailed recommendations": DETAILED,
    "## Insights by feedback source": INSIGHTS,
    "## Machine-readable summary": MACHINE,
})


def test_a_complete_report_has_no_missing_sections():
    assert halo.check_sections(FULL) == []
    assert halo.check_subheadings(FULL) == []


def test_it_names_each_missing_section():
    text = report(sections=[s for s in SECTIONS if s not in ("## Ranked recommendation table",
                                                             "## Machine-readable summary")])
    assert halo.check_sections(text) == ["## Ranked recommendation table", "## Machine-readable summary"]


def test_it_names_a_section_out_of_order():
    order = SECTIONS[:]
    order[1], order[2] = order[2], order[1]  # table before the top 3
    assert halo.check_sections(report(sections=order)) == ["## Ranked recommendation table"]


def test_a_heading_inside_text_or_at_the_wrong_level_does_not_count():
    text = FULL.replace("## Executive summary", "See the Executive summary below.\n### Executive summary")
    assert halo.check_sections(text) == ["## Executive summary"]
    inline = FULL.replace("\n## Insights by feedback source", " ## Insights by feedback source")
    assert halo.check_sections(inline) == ["## Insights by feedback source"]


def test_numbered_or_emphasised_headings_count():
    text = FULL.replace("## Executive summary", "## 1. Executive summary").replace(
        "## Detailed recommendations", "## **Detailed recommendations**")
    assert halo.check_sections(text) == []


def test_it_names_missing_or_misplaced_detailed_subheadings():
    without_routing = FULL.replace("#### Routing\n\ntext\n\n", "")
    assert halo.check_subheadings(without_routing) == ["#### Routing"]
    misplaced = FULL.replace("#### Skills\n\ntext\n\n", "").replace("#### Evals\n\ntext", "#### Evals\n\ntext\n\n#### Skills")
    assert halo.check_subheadings(misplaced) == ["#### Skills"]
    assert halo.check_subheadings(report()) == list(halo.DETAILED_SUBHEADINGS)


def test_the_handoff_starts_at_the_executive_summary():
    handoff = halo.clean_handoff(FULL)
    assert handoff.startswith("## Executive summary\n")
    assert "Here is my report" not in handoff
    assert handoff.endswith("```\n")
    assert halo.check_sections(handoff) == []


def test_the_handoff_cuts_a_heading_glued_to_the_preface():
    glued = FULL.replace("Here is my report.\n\n## Executive summary", "Here is my report.## Executive summary")
    assert halo.clean_handoff(glued).startswith("## Executive summary")


def test_a_report_without_an_executive_summary_is_kept_whole():
    text = "Thinking...\n\n## Something else\n\nbody"
    assert halo.clean_handoff(text) == text + "\n"


def test_extract_section_stops_at_the_next_top_level_heading():
    section = halo.extract_section(FULL, "## Detailed recommendations")
    assert section.startswith("## Detailed recommendations")
    assert "#### Evals" in section and "### Observability and evals" in section
    assert "## Insights by feedback source" not in section
    assert halo.extract_section(FULL, "## Machine-readable summary").endswith("```")
    assert halo.extract_section(FULL, "## Nothing like this") == ""


def test_the_handoff_summary_is_the_top_three_and_the_insights():
    summary = halo.handoff_summary(FULL)
    assert summary.startswith("## Top 3 changes to implement first\n\n1. **Roll up concentration.**")
    assert "## Insights by feedback source" in summary
    assert "| Human feedback | Roll up to parent accounts. |" in summary
    assert "## Ranked recommendation table" not in summary
    assert "## Executive summary" not in summary


def test_the_handoff_summary_falls_back_to_the_whole_report():
    assert halo.handoff_summary("Just prose.\n") == "Just prose."


def test_top_priorities_come_from_the_json_block():
    assert halo.top_priorities(FULL) == PRIORITIES["top_priorities"]


def test_top_priorities_is_empty_without_a_valid_block():
    assert halo.top_priorities(report()) == []
    broken = FULL.replace('"rank": 1', '"rank": 1,,')
    assert halo.top_priorities(broken) == []
    other = FULL.replace('"top_priorities"', '"priorities"')
    assert halo.top_priorities(other) == []


def test_the_prompt_asks_for_the_seven_sections_in_order():
    prompt = halo.render_report_prompt()
    positions = [prompt.index(f"`{heading}`") for heading in halo.REQUIRED_SECTIONS]
    assert positions == sorted(positions)
    sub_positions = [prompt.index(f"`{heading}`") for heading in halo.DETAILED_SUBHEADINGS]
    assert sub_positions == sorted(sub_positions)
    assert sub_positions[0] > positions[4]  # under Detailed recommendations
    for words in ("human feedback", "missing", "not reliably followed", "observability", "top_priorities",
                  "owner", "harness_config", "eval_gate"):
        assert words in prompt


def test_the_prompt_asks_for_citations_with_the_context_ids_and_to_check_the_harness_first():
    prompt = halo.render_report_prompt()
    for syntax in ("`[feedback:<feedback.id>]`", "`[eval:<eval.id>]`", "`[gate:<eval.id>]`", "`[span:<span_id>]`"):
        assert syntax in prompt
    assert "search the system prompt and the tool policy" in prompt
    # What the prompt asks for is what the resolver reads.
    assert halo.CITATION.findall("[feedback:human-trace-01-3] [gate:eval-1] [eval:x] [span:abc]") == [
        ("feedback", "human-trace-01-3"), ("gate", "eval-1"), ("eval", "x"), ("span", "abc")]


def test_the_retry_prompt_names_the_problems_and_asks_for_everything():
    prompt = halo.render_retry_prompt(["## Ranked recommendation table"])
    assert "- `## Ranked recommendation table`" in prompt
    assert "7. `## Machine-readable summary`" in prompt
    assert "complete report again" in prompt

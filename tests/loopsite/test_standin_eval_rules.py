"""The stand-in eval generator and judge on a dataroom and feedback that are not the sample's.

A generated case must catch the answer it came from (fail on it), pass a corrected answer, and
carry pass/fail examples that the same checks grade the right way. Checks come from the
feedback's own words and figures; literals the judged answer already satisfies are dropped.
"""

import pytest

from loopsite.standin import eval_generator, judge
from loopsite.standin.textrules import find_wording, key_terms, title_case

ANSWER = (
    "**Answer.** Gross margin is 48% per the board pack (`board/pack_q3.md`). "
    "The lifetime value (LTV) is $12,000 per customer (`kpis/unit_economics.csv`).\n\n"
    "**Evidence**\n- Churn is 3% monthly (`kpis/churn.csv`).\n- Top depot: Harbour Freight Ltd handles 40% of volume "
    "(`ops/depots.csv`).\n"
)
TRACE = {"trace_id": "b" * 32, "trace_label": "run-7", "answer": ANSWER}
FEEDBACK = {
    "trace_id": "b" * 32, "trace_label": "run-7", "theme": "margin_quality", "verdict": "fail",
    "summary": "Lead with the audited 41% gross margin from Kestrel Audit Partners; the board pack figure is not reliable.",
    "required_observations": ["Prefer audited gross margin over board gross margin", "Name the 41% audited margin",
                              "Mark the LTV figure unsupported", "Cite kpis/churn.csv"],
    "prohibited_claims": ["Do not call the churn figure audited", "Do not say Harbour Freight is simply a minor depot"],
}
CORRECTED = ("Audited gross margin is 41% (Kestrel Audit Partners, `audit/fy24.pdf`); the board pack's 48% differs and "
             "should not be relied on. LTV is unsupported: no cohort data backs it. Churn is 3% monthly "
             "(`kpis/churn.csv`).")


def failures(output: str, case: dict) -> int:
    return eval_generator._failures(output, case["rubric"], case["deterministic_assertions"])


@pytest.fixture
def case():
    return eval_generator.eval_for(FEEDBACK, TRACE, [], set())


def test_checks_test_what_the_reviewer_asked_for_and_catch_the_judged_answer(case):
    assert case["deterministic_assertions"] == [
        {"type": "icontains", "value": "Kestrel Audit Partners"},  # the summary's name for the same subject
        {"type": "icontains", "value": "41%"},  # the figure the reviewer names and the answer lacks
        # the answer's own wording for figures the reviewer marked as wrong or unsupported
        {"type": "not-contains", "value": "Gross margin is 48%"},
        {"type": "not-contains", "value": "The lifetime value (LTV) is $12,000"},
    ]  # "kpis/churn.csv" is already in the answer: a check on it could not catch this answer
    assert failures(ANSWER, case) >= 1
    assert judge.grade(output=ANSWER, rubric=case["rubric"])["pass"] is False
    assert failures(CORRECTED, case) == 0, judge.grade(output=CORRECTED, rubric=case["rubric"])


def test_the_examples_are_graded_the_right_way_by_the_same_checks(case):
    assert failures(case["suggested_pass_example"], case) == 0
    assert failures(case["suggested_fail_example"], case) >= 1
    assert "Gross margin is 48%" in case["suggested_fail_example"]  # the answer's offending text


def test_generated_text_reads_as_written_by_a_person(case):
    assert case["title"] == "Margin Quality: Lead with the Audited 41% Gross Margin from Kestrel Audit Partners"
    assert "should the answer" not in case["expected_behavior"].lower()
    assert case["expected_behavior"].startswith("Lead with the audited 41% gross margin")
    assert "A passing answer must prefer audited gross margin over board gross margin, name the 41% audited margin, " \
           "mark the LTV figure unsupported and cite kpis/churn.csv." in case["expected_behavior"]
    lines = case["rubric"].splitlines()
    assert len(lines) == len(set(lines))
    assert lines[2] == '- Prefer audited gross margin over board gross margin (names "Kestrel Audit Partners").'


def test_a_prohibited_claim_the_answer_does_not_make_stays_in_the_rubric_only():
    feedback = {**FEEDBACK, "required_observations": [], "prohibited_claims": ['Do not say "EBITDA positive"']}
    case = eval_generator.eval_for(feedback, TRACE, [], set())
    assert case["deterministic_assertions"] == []
    assert case["scoring_method"] == "llm_judge"
    assert '"EBITDA positive"' in case["rubric"]


def test_a_pass_verdict_keeps_every_literal_check():
    feedback = {**FEEDBACK, "verdict": "pass", "required_observations": ["Cite kpis/churn.csv"],
                "prohibited_claims": ['Do not say "EBITDA positive"'], "summary": ""}
    case = eval_generator.eval_for(feedback, TRACE, [], set())
    assert case["deterministic_assertions"] == [{"type": "icontains", "value": "kpis/churn.csv"},
                                                {"type": "not-contains", "value": "EBITDA positive"}]
    assert failures(ANSWER, case) == 0


def test_a_wording_claim_is_found_in_the_answer_without_its_fillers():
    assert find_wording('The vendor is "ISO 27001 certified" per sales.', "ISO 27001 is simply certified") == \
        'vendor is "ISO 27001 certified"'
    assert find_wording("Nothing here.", "ISO 27001 is certified") == ""


@pytest.mark.parametrize("text,terms", [
    ("Name the 18-month payback", ["18-month"]),
    ("Distinguish Tier I from Tier II", ["Tier I", "Tier II"]),
    ("Roll exposure up to Orion Group", ["Orion Group"]),
    ("Flag the $3.2M adjustment in ledger.xlsx", ["ledger.xlsx", "$3.2M"]),
    ("Mark official GMV unsupported", ["GMV"]),
])
def test_key_terms_are_figures_names_acronyms_and_files(text, terms):
    assert key_terms(text) == terms


def test_title_case_keeps_acronyms_and_lowers_small_words():
    assert title_case("refuse official NRR and CAC payback in the plan") == "Refuse Official NRR and CAC Payback in the Plan"


@pytest.mark.parametrize("output,passed", [
    ("The two figures conflict; finance ARR is $40M.", True),  # a synonym of the reviewer's word counts
    ("Finance ARR is $40M.", False),
])
def test_the_judge_checks_key_words_with_synonyms(output, passed):
    rubric = "Requirements:\n- Preserve the finance ARR contradiction."
    assert judge.grade(output=output, rubric=rubric)["pass"] is passed


CLAIM = "The answer must not make the claim this reviewer's rule prohibits (fail if it makes it, in any words):\n- {}"


@pytest.mark.parametrize("claim,output,passed", [
    # the claim's wording, fillers aside; quoting it as weaker evidence is not making it
    ("Do not say ISO 27001 is simply certified", 'The vendor is "ISO 27001 certified".', False),
    ("Do not say ISO 27001 is simply certified", 'Sales wording "ISO 27001 certified" is weaker evidence, not a '
                                                 "certificate.", True),
    # behaviour: one sentence with all the claim's key words and figures
    ("Do not stop at depot-level exposure", "Exposure at the depot level: Harbour Freight Ltd is 40%.", False),
    ("Do not stop at depot-level exposure", "Rolled up to Orion Group the exposure is 55%.", True),
    # settling a figure the reviewer wants left open
    ("Do not promote the management GMV estimate into an official metric", "GMV is $80M (`kpis.csv`).", False),
    ("Do not promote the management GMV estimate into an official metric",
     "Official GMV is unsupported: the $80M figure is a management estimate.", True),
    ("Do not imply more than 18 months of payback", "Payback is 14 months.", True),
])
def test_the_judge_checks_unquoted_prohibitions_by_wording_key_words_and_settled_figures(claim, output, passed):
    assert judge.grade(output=output, rubric=CLAIM.format(claim))["pass"] is passed

"""The schema checks on model output: messages name the problem and where it is."""

import pytest

from reviews.validation import SchemaError, parse_json, validate_evals, validate_insights

TRACES = {"a" * 32, "b" * 32}


def good_eval(**changes):
    item = {
        "eval_id": "runway-risk", "title": "Runway risk", "scoring_method": "hybrid",
        "expected_behavior": "Names the runway.", "source_trace_id": "a" * 32, "rubric": 'Mentions "11 months".',
        "deterministic_assertions": [{"type": "icontains", "value": "11 months"}],
        "suggested_pass_example": "11 months of runway.", "suggested_fail_example": "Plenty of runway.",
    }
    item.update(changes)
    return item


def test_parse_json_takes_a_fenced_block():
    assert parse_json('Here:\n```json\n[1, 2]\n```\nDone.') == [1, 2]


@pytest.mark.parametrize("text,message", [
    ("", "Invalid JSON: the output is empty."),
    ("[1, 2", "Invalid JSON: Expecting ',' delimiter at line 1 column 6."),
])
def test_parse_json_errors_are_readable(text, message):
    with pytest.raises(SchemaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_json(text)


def test_a_good_eval_list_is_cleaned():
    [item] = validate_evals([good_eval(eval_id="Runway-Risk")], trace_ids=TRACES)
    assert item["eval_id"] == "runway-risk" and item["deterministic_assertions"] == [
        {"type": "icontains", "value": "11 months"}]


def test_a_wrapped_list_is_accepted():
    assert len(validate_evals({"evals": [good_eval()]}, trace_ids=TRACES)) == 1


def test_an_unknown_trace_is_rejected_by_name():
    with pytest.raises(SchemaError, match="item 1 \\(eval_id 'runway-risk'\\): source_trace_id 'trace-01' is not "
                                          "the trace_id of any run in this cycle"):
        validate_evals([good_eval(source_trace_id="trace-01")], trace_ids=TRACES)


def test_every_problem_is_listed():
    bad = good_eval(scoring_method="vibes", deterministic_assertions=[{"type": "regex", "value": "x"}, {"type": "contains"}])
    del bad["rubric"]
    with pytest.raises(SchemaError) as error:
        validate_evals([good_eval(), bad, "nope"], trace_ids=TRACES)
    message = str(error.value)
    assert "item 2 (eval_id 'runway-risk'): missing key(s) `rubric`" in message
    assert "scoring_method 'vibes' is not one of deterministic, llm_judge, hybrid" in message
    assert "deterministic_assertions #1: type 'regex' is not allowed (use contains, icontains, not-contains)" in message
    assert "deterministic_assertions #2: `value` must be a non-empty string" in message
    assert "item 3: must be an object, got str" in message


def test_rubric_and_assertion_rules_follow_the_scoring_method():
    with pytest.raises(SchemaError, match="a llm_judge eval needs a rubric"):
        validate_evals([good_eval(scoring_method="llm_judge", rubric="")], trace_ids=TRACES)
    with pytest.raises(SchemaError, match="a deterministic eval needs at least one assertion"):
        validate_evals([good_eval(scoring_method="deterministic", deterministic_assertions=[])], trace_ids=TRACES)


def test_insights_need_known_traces_and_string_observations():
    good = {"insight_id": "i1", "trace_id": "b" * 32, "question": "Q", "source_type": "llm_insight",
            "observations": ["Cites files."]}
    assert validate_insights([good], trace_ids=TRACES)[0]["observations"] == ["Cites files."]
    with pytest.raises(SchemaError) as error:
        validate_insights([{**good, "trace_id": "c" * 32, "observations": [3]}, {**good, "source_type": "human"}],
                          trace_ids=TRACES)
    assert f"item 1: trace_id '{'c' * 32}' is not the trace_id of any run in this cycle" in str(error.value)
    assert "item 1: every observation must be a non-empty string" in str(error.value)
    assert "item 2: `source_type` must be 'llm_insight', got 'human'" in str(error.value)


def test_an_empty_list_or_a_non_list_is_rejected():
    with pytest.raises(SchemaError, match="Expected a JSON list of LLM insights, got an empty list."):
        validate_insights([], trace_ids=TRACES)
    with pytest.raises(SchemaError, match="Expected a JSON list of eval definitions, got dict."):
        validate_evals({"a": 1, "b": 2}, trace_ids=TRACES)

"""Reviews go back out: a run's trace download carries its approved review as OpenInference
`annotations.*` attributes on the root span (runs/annotations.py, provided by reviews/approval.py)."""

import json

import pytest

from reviews.models import Feedback

from .builders import make_cycle, make_feedback, make_run
from .gen_builders import approve

pytestmark = pytest.mark.django_db


def download(client, run) -> list[dict]:
    response = client.get(f"/runs/{run.pk}/trace.jsonl")
    assert response.status_code == 200
    return [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]


def annotation_keys(line: dict) -> set[str]:
    return {key for key in line["attributes"] if key.startswith("annotations.")}


def test_the_approved_review_is_on_the_root_span_of_the_download(client_for, reviewer, approver):
    run = make_run(label="trace-01")
    cycle = make_cycle(run, name="Support review")
    make_feedback(cycle, run, reviewer, summary="Quote the policy.", theme="policy", verdict="fail",
                  observations=("Quote the 30-day window",), claims=("Do not promise refunds",),
                  status=Feedback.Status.SUBMITTED)
    before = download(client_for(reviewer), run)
    assert all(not annotation_keys(line) for line in before)  # submitted is not approved: nothing goes out

    approve(cycle, run, approver)
    lines = download(client_for(reviewer), run)
    assert [line["span_id"] for line in lines] == [line["span_id"] for line in before]
    root, tool = lines
    attributes = root["attributes"]
    assert attributes["annotations.0.name"] == "loopsite.review"
    assert attributes["annotations.0.annotator_kind"] == "HUMAN"
    assert attributes["annotations.0.result.label"] == "fail"
    assert attributes["annotations.0.result.score"] == 0.0
    assert attributes["annotations.0.result.explanation"] == "Quote the policy."
    metadata = json.loads(attributes["annotations.0.metadata"])
    assert metadata["theme"] == "policy" and metadata["cycle"] == "Support review"
    assert metadata["approved_by"] == approver.get_username()
    assert [item["text"] for item in metadata["required_observations"]] == ["Quote the 30-day window"]
    assert [item["text"] for item in metadata["prohibited_claims"]] == ["Do not promise refunds"]
    assert not annotation_keys(tool)  # only the root span carries them


import pytest
from django.urls import reverse

from reviews.trace import phrases_of

from .builders import make_cycle, make_run

pytestmark = pytest.mark.django_db


def check(client, cycle, run, text):
    return client.get(reverse("reviews:claim-check", args=[cycle.pk, run.pk]), {"item_text": text}, HTTP_HX_REQUEST="true")


def test_it_finds_the_claim_in_the_answer_case_insensitively(client_for, reviewer):
    run = make_run()
    cycle = make_cycle(run)
    body = check(client_for(reviewer), cycle, run, "Do not say SOC 2 IS COMPLETE").content.decode()
    assert 'data-testid="claim-found"' in body
    assert f'href="/runs/{run.pk}/#answer"' in body
    assert "the answer</a>" in body


def test_it_names_the_artifact_and_line(client_for, reviewer):
    run = make_run()
    cycle = make_cycle(run)
    body = check(client_for(reviewer), cycle, run, "Do not claim that the company has 122% official NRR").content.decode()
    assert "investment_memo.md, line 4</a>" in body
    assert f'href="/runs/{run.pk}/#artifact-investment-memo-md-L4"' in body  # the line itself


def test_absent_claims_say_so(client_for, reviewer):
    run = make_run()
    cycle = make_cycle(run)
    body = check(client_for(reviewer), cycle, run, "Do not imply more than 12 months of runway").content.decode()
    assert 'data-testid="claim-absent"' in body
    assert "✓</span> Not found in the answer or the artifacts: this run does not make the claim." in body
    assert "muted" not in body  # the good outcome, not a faded aside


def test_short_text_is_not_checked(client_for, reviewer):
    run = make_run()
    cycle = make_cycle(run)
    assert check(client_for(reviewer), cycle, run, "no").content.decode().strip() == ""


def test_outsiders_get_403(client_for, outsider):
    run = make_run()
    assert check(client_for(outsider), make_cycle(run), run, "SOC 2").status_code == 403


def test_phrases_drop_the_instruction_and_keep_quotes():
    assert phrases_of('Do not say "SOC 2 complete".') == ['Do not say "SOC 2 complete"', '"SOC 2 complete"', "SOC 2 complete"]
    assert phrases_of("Never state that runway exceeds a year") == ["Never state that runway exceeds a year", "runway exceeds a year"]

import pytest
from django.db import OperationalError
from django.test import RequestFactory
from django.urls import reverse

from loopsite import views
from reviews.models import Feedback
from tests.reviews.builders import make_cycle, make_feedback, make_run

pytestmark = pytest.mark.django_db


def test_a_403_says_why_and_keeps_the_navigation(client_for, reviewer, reviewer2):
    run = make_run()
    cycle = make_cycle(run)
    make_feedback(cycle, run, reviewer)  # rita's own draft: she has not submitted
    theirs = make_feedback(cycle, run, reviewer2, status=Feedback.Status.SUBMITTED)
    response = client_for(reviewer).get(reverse("reviews:feedback-history", args=[theirs.pk]))
    assert response.status_code == 403
    body = response.content.decode()
    assert 'data-testid="error-page" data-status="403"' in body
    assert "blind review hides it until you submit your own" in body
    assert 'class="mainnav"' in body and reverse("reviews:inbox") in body


def test_a_role_403_names_the_role(client_for, reviewer):
    response = client_for(reviewer).get(reverse("reviews:next-approval"))
    assert response.status_code == 403
    assert "This needs the approver role." in response.content.decode()


def test_an_htmx_403_is_plain_text(client_for, reviewer):
    response = client_for(reviewer).get(reverse("reviews:next-approval"), HTTP_HX_REQUEST="true")
    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/plain")
    assert response.content.decode() == "This needs the approver role."


def test_a_404_is_the_site_page(client_for, reviewer):
    response = client_for(reviewer).get(reverse("reviews:cycle-detail", args=[999999]))
    assert response.status_code == 404
    body = response.content.decode()
    assert 'data-status="404"' in body and "has been deleted" in body and 'class="mainnav"' in body
    assert "No Cycle matches" not in body  # Http404's internal wording stays inside


def test_an_unknown_url_is_a_404_page_even_before_login(client):
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    body = response.content.decode()
    assert 'data-status="404"' in body and "Log out" not in body


def test_a_500_is_the_site_page(reviewer):
    request = RequestFactory().get("/cycles/")
    request.user = reviewer
    response = views.server_error(request)
    assert response.status_code == 500
    assert 'data-status="500"' in response.content.decode()


def test_a_500_page_renders_even_when_the_site_cannot(reviewer, monkeypatch):
    request = RequestFactory().get("/cycles/")
    request.user = reviewer

    def broken(*args, **kwargs):
        raise OperationalError("database is down")

    monkeypatch.setattr(views, "render", broken)
    response = views.server_error(request)
    assert response.status_code == 500
    assert "Server error (500)" in response.content.decode()


def test_a_view_that_raises_gets_the_500_page(client_for, reviewer, monkeypatch):
    from reviews import inbox

    def boom(user):
        raise RuntimeError("boom")

    monkeypatch.setattr(inbox, "review_items", boom)
    client = client_for(reviewer)
    client.raise_request_exception = False
    response = client.get(reverse("reviews:inbox"))
    assert response.status_code == 500
    assert 'data-status="500"' in response.content.decode()

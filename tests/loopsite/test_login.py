import pytest

pytestmark = pytest.mark.django_db


def test_every_page_requires_login(client):
    response = client.get("/runs/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_it_shows_the_standin_banner_when_no_key_is_set(client_for, reviewer, settings):
    settings.STANDIN_IN_USE = True
    response = client_for(reviewer).get("/runs/")
    assert b'data-testid="standin-banner"' in response.content


def test_it_hides_the_banner_with_a_real_provider(client_for, reviewer, settings):
    settings.STANDIN_IN_USE = False
    response = client_for(reviewer).get("/runs/")
    assert b'data-testid="standin-banner"' not in response.content


def test_roles_exist_as_groups(django_user_model):
    from django.contrib.auth.models import Group

    assert set(Group.objects.values_list("name", flat=True)) >= {"reviewer", "approver", "engineer"}

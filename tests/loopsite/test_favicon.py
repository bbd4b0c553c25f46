import pytest

pytestmark = pytest.mark.django_db


def test_favicon_ico_is_served_without_login(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    assert b"<svg" in response.content
    assert "max-age=86400" in response["Cache-Control"]


def test_pages_link_the_icon(client_for, reviewer):
    body = client_for(reviewer).get("/inbox/").content.decode()
    assert '<link rel="icon" href="/static/loopsite/favicon.svg" type="image/svg+xml">' in body


def test_favicon_rejects_post(client):
    assert client.post("/favicon.ico").status_code == 405

import pytest
from django.urls import reverse

from .ui_builders import XSS, assert_inert, make_dataroom, make_run

pytestmark = pytest.mark.django_db


def test_pages_require_login(client):
    room = make_dataroom()
    for url in (reverse("runs:dataroom-list"), room.get_absolute_url(),
                reverse("runs:dataroom-file", args=[room.pk, "overview.md"])):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_pages_require_a_role(client_for, outsider):
    room = make_dataroom()
    client = client_for(outsider)
    assert client.get(reverse("runs:dataroom-list")).status_code == 403
    assert client.get(room.get_absolute_url()).status_code == 403


def test_the_list_shows_counts_and_the_upload_link_for_engineers(client_for, reviewer, engineer):
    room = make_dataroom("acme")
    make_run(dataroom=room)
    html = client_for(reviewer).get(reverse("runs:dataroom-list")).content.decode()
    assert "acme" in html and f'href="/runs/?dataroom={room.pk}">1</a>' in html
    assert reverse("runs:dataroom-upload") not in html
    assert reverse("runs:dataroom-upload") in client_for(engineer).get(reverse("runs:dataroom-list")).content.decode()


def test_the_detail_shows_a_file_tree_with_sizes(client_for, reviewer):
    room = make_dataroom("acme", files={
        "overview.md": b"12345",
        "financials/p_and_l.csv": b"a,b\n1,2\n",
        "financials/notes/x.md": b"xx",
        "legal/open_issues.md": b"abc",
    })
    response = client_for(reviewer).get(room.get_absolute_url())
    assert response.status_code == 200
    tree = [(row["name"], row["depth"], row["is_dir"], row["size"]) for row in response.context["tree"]]
    assert tree == [
        ("financials", 0, True, 10),
        ("notes", 1, True, 2),
        ("x.md", 2, False, 2),
        ("p_and_l.csv", 1, False, 8),
        ("legal", 0, True, 3),
        ("open_issues.md", 1, False, 3),
        ("overview.md", 0, False, 5),
    ]
    html = response.content.decode()
    assert reverse("runs:dataroom-file", args=[room.pk, "financials/notes/x.md"]) in html
    assert "<strong>financials/</strong>" in html


def test_a_file_is_shown_escaped(client_for, reviewer):
    room = make_dataroom("acme", files={"notes/evil.md": XSS.encode()})
    response = client_for(reviewer).get(reverse("runs:dataroom-file", args=[room.pk, "notes/evil.md"]))
    assert response.status_code == 200
    html = response.content.decode()
    assert_inert(html)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html


def test_a_csv_file_is_a_table_and_escaped(client_for, reviewer):
    room = make_dataroom("acme", files={"data.csv": b"name,value\n<b>x</b>,2\n"})
    html = client_for(reviewer).get(reverse("runs:dataroom-file", args=[room.pk, "data.csv"])).content.decode()
    assert "<th>name</th>" in html and "<td>&lt;b&gt;x&lt;/b&gt;</td>" in html


def test_a_binary_file_is_not_shown(client_for, reviewer):
    room = make_dataroom("acme", files={"logo.png": b"\x89PNG\x00\xff\xfe"})
    html = client_for(reviewer).get(reverse("runs:dataroom-file", args=[room.pk, "logo.png"])).content.decode()
    assert "binary file (7 bytes)" in html


def test_an_unknown_file_is_404(client_for, reviewer):
    room = make_dataroom()
    assert client_for(reviewer).get(reverse("runs:dataroom-file", args=[room.pk, "nope.md"])).status_code == 404
    assert client_for(reviewer).get(reverse("runs:dataroom-file", args=[room.pk, "../overview.md"])).status_code == 404

import pytest
from django.urls import reverse

from runs.versions import harness_diff, unified

from .ui_builders import XSS, assert_inert, make_harness

pytestmark = pytest.mark.django_db

URL = reverse("runs:harness-diff")


@pytest.fixture
def pair():
    v1 = make_harness("v001", system_prompt="Line one.\nLine two.", tool_policy={"shell": "read-only"},
                      model_settings={"agent_model": "gpt-a"})
    v2 = make_harness("v002", status="draft", parent=v1, system_prompt="Line one.\nLine two, changed.",
                      tool_policy={"shell": "read-only"}, model_settings={"agent_model": "gpt-b"})
    return v1, v2


def test_unified_gives_kinds_per_line():
    assert unified("a\nb", "a\nc", from_name="x", to_name="y") == [
        ("file", "--- x"), ("file", "+++ y"), ("hunk", "@@ -1,2 +1,2 @@"), ("same", " a"), ("del", "-b"), ("add", "+c"),
    ]
    assert unified({"k": 1}, {"k": 1}) == []


def test_the_diff_covers_instructions_and_each_field(pair):
    diffs = {d.name: d for d in harness_diff(*pair)}
    assert list(diffs) == ["assembled instructions", "system prompt", "tool policy", "model settings"]
    assert ("del", "-Line two.") in diffs["system prompt"].lines and ("add", "+Line two, changed.") in diffs["system prompt"].lines
    assert ("add", "+- Config version: `v002`.") in diffs["assembled instructions"].lines
    assert not diffs["tool policy"].changed
    assert (diffs["model settings"].added, diffs["model settings"].removed) == (1, 1)


def test_it_requires_a_role(client, client_for, outsider, pair):
    assert client.get(URL, {"a": "v001", "b": "v002"}).status_code == 302
    assert client_for(outsider).get(URL, {"a": "v001", "b": "v002"}).status_code == 403


def test_a_reviewer_sees_the_diff_between_two_versions(client_for, reviewer, pair):
    response = client_for(reviewer).get(URL, {"a": "v001", "b": "v002"})
    assert response.status_code == 200
    html = response.content.decode()
    assert '<span class="diff-del">-Line two.</span>' in html
    assert '<span class="diff-add">+Line two, changed.</span>' in html
    assert '<span class="diff-add">+  &quot;agent_model&quot;: &quot;gpt-b&quot;</span>' in html
    assert "<h3>Tool policy <span class=\"muted small\">no change</span></h3>" in html


def test_either_direction_works(client_for, reviewer, pair):
    html = client_for(reviewer).get(URL, {"a": "v002", "b": "v001"}).content.decode()
    assert '<span class="diff-add">+Line two.</span>' in html


def test_htmx_gets_the_result_fragment(client_for, reviewer, pair):
    response = client_for(reviewer).get(URL, {"a": "v001", "b": "v002"}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert "<html" not in html and 'data-testid="diff-result"' in html and "+Line two, changed." in html


def test_an_unknown_version_is_named(client_for, reviewer, pair):
    response = client_for(reviewer).get(URL, {"a": "v001", "b": "v999"})
    assert response.status_code == 200
    assert "To: There is no harness version with that label." in response.content.decode()


def test_without_a_pair_it_asks_for_one(client_for, reviewer, pair):
    assert "Pick two versions to compare." in client_for(reviewer).get(URL).content.decode()


def test_the_diff_is_escaped(client_for, reviewer):
    make_harness("v001", system_prompt="Safe.")
    make_harness("v002", status="draft", system_prompt=XSS, tool_policy={"note": XSS})
    html = client_for(reviewer).get(URL, {"a": "v001", "b": "v002"}).content.decode()
    assert_inert(html)
    assert "+&lt;script&gt;alert(" in html


def test_the_detail_page_links_to_the_diff_with_its_parent(client_for, reviewer, pair):
    html = client_for(reviewer).get(pair[1].get_absolute_url()).content.decode()
    assert f'href="{URL}?a=v001&amp;b=v002"' in html

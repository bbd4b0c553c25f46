"""Bad requests get OpenAI-style error JSON with a 4xx status and a message naming the problem."""

import ast
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return body["error"]


def test_it_rejects_a_body_that_is_not_json(standin_server):
    response = httpx.post(f"{standin_server}/responses", content=b"{not json",
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in error_of(response)["message"]


def test_it_rejects_json_that_is_not_an_object(standin_server):
    response = httpx.post(f"{standin_server}/chat/completions", json=[1, 2])
    assert response.status_code == 400
    assert "JSON object" in error_of(response)["message"]


def test_it_names_an_unknown_path(standin_server):
    response = httpx.post(f"{standin_server}/embeddings", json={"model": "m", "input": "x"})
    assert response.status_code == 404
    assert "/v1/embeddings" in error_of(response)["message"]
    assert httpx.get(f"{standin_server}/nothing-here").status_code == 404


def test_it_rejects_other_methods(standin_server):
    response = httpx.delete(f"{standin_server}/responses")
    assert response.status_code == 405
    assert "DELETE" in error_of(response)["message"]


@pytest.mark.parametrize(("path", "body", "named"), [
    ("/responses", {"input": "hi"}, "model"),
    ("/responses", {"model": "m"}, "input"),
    ("/responses", {"model": "m", "input": 42}, "input"),
    ("/chat/completions", {"model": "m", "messages": []}, "messages"),
    ("/chat/completions", {"model": "m", "messages": ["hi"]}, "messages[0]"),
])
def test_it_names_the_missing_or_malformed_field(standin_server, path, body, named):
    response = httpx.post(standin_server + path, json=body)
    assert response.status_code == 400
    error = error_of(response)
    assert named in error["message"]
    assert error["param"] == named


def test_the_openai_client_sees_a_bad_request(standin_server):
    client = OpenAI(base_url=standin_server, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="input"):
        client.responses.create(model="m", input=42)


def test_the_package_imports_no_django_and_reads_no_secrets():
    package = Path(__file__).resolve().parents[2] / "loopsite" / "standin"
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not any(alias.name.startswith("django") for alias in node.names), path
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith(("django", "loopsite.settings")), path
                assert node.level > 0 or not (node.module or "").startswith("loopsite"), path
        source = path.read_text(encoding="utf-8")
        assert "OPENAI_API_KEY" not in source and "SECRET" not in source, path

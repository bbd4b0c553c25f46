import pytest
from django.core.exceptions import PermissionDenied

from runs.models import Agent, Harness, Run
from loopsite.models import AuditEvent

from .ui_builders import make_harness, make_run

pytestmark = pytest.mark.django_db


def test_existing_harnesses_and_runs_belong_to_the_builtin_agent():
    run = make_run()
    builtin = Agent.builtin()
    assert builtin.kind == Agent.Kind.BUILTIN and builtin.name == "Diligence analyst"
    assert run.harness.agent == builtin and run.agent == builtin and run.source == Run.Source.BUILTIN
    assert Agent.objects.filter(kind=Agent.Kind.BUILTIN).count() == 1


def test_an_engineer_creates_an_external_agent_and_its_token_is_stored_hashed(engineer):
    agent, token = Agent.create_external(by=engineer, name="Support bot")
    assert agent.slug == "support-bot" and agent.kind == Agent.Kind.EXTERNAL
    assert token.startswith("lsk_") and len(token) > 40
    assert token not in agent.token_hash and agent.token_hash == Agent.hash_token(token)
    assert token.startswith(agent.token_prefix)
    assert Agent.for_token(token) == agent
    assert Agent.for_token(token + "x") is None
    assert AuditEvent.objects.filter(action="agent.create").exists()
    # a second agent with the same slug base gets its own slug
    other, _ = Agent.create_external(by=engineer, name="Support  Bot!")
    assert other.slug == "support-bot-2"


def test_only_engineers_create_agents(reviewer):
    with pytest.raises(PermissionDenied):
        Agent.create_external(by=reviewer, name="X")


def test_revoke_and_rotate(engineer):
    agent, token = Agent.create_external(by=engineer, name="Bot")
    new_token = agent.rotate_token(by=engineer)
    assert new_token != token
    assert Agent.for_token(token) is None and Agent.for_token(new_token) == agent
    agent.revoke_token(by=engineer)
    assert Agent.for_token(new_token) is None
    assert not Agent.objects.get(pk=agent.pk).has_active_token


def test_the_builtin_agent_has_no_token():
    builtin = Agent.builtin()
    assert Agent.for_token("") is None
    assert not builtin.has_active_token


def test_versions_seen_in_traces_become_imported_harness_rows(engineer):
    make_harness()  # the built-in v001
    agent, _ = Agent.create_external(by=engineer, name="v")
    first = agent.harness_for_version("001")
    assert first.is_imported and first.agent == agent and first.agent_version == "001"
    assert first.system_prompt == "" and first.version == "v-001"
    assert agent.harness_for_version("001") == first
    odd = agent.harness_for_version("1.2/beta")
    assert "/" not in odd.version and odd.agent_version == "1.2/beta"
    assert Harness.objects.get(version="v001").agent.is_builtin


def test_promotion_is_per_agent(engineer, approver):
    builtin_v1 = make_harness(status=Harness.Status.PROMOTED)
    agent, _ = Agent.create_external(by=engineer, name="Bot")
    imported = agent.harness_for_version("1.0")
    imported.promote(by=approver, override_reason="first version")
    builtin_v1.refresh_from_db()
    imported.refresh_from_db()
    assert builtin_v1.status == Harness.Status.PROMOTED
    assert imported.status == Harness.Status.PROMOTED

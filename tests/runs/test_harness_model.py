import pytest
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction

from loopsite.models import AuditEvent
from runs.models import Harness, HarnessFrozenError, HarnessStateError

from .ui_builders import make_harness, make_run

pytestmark = pytest.mark.django_db


# --- labels --------------------------------------------------------------------------------


@pytest.mark.parametrize("label, taken, expected", [
    ("v001", [], "v002"),
    ("v001", ["v002", "v003"], "v004"),
    ("v099", [], "v100"),
    ("v9", [], "v10"),
    ("baseline", [], "baseline-2"),
    ("release-1.4", [], "release-1.5"),
])
def test_the_next_label_counts_up_and_skips_taken_ones(label, taken, expected):
    harness = make_harness(label)
    for other in taken:
        make_harness(other, status="draft")
    assert harness.next_version_label() == expected


# --- immutable once it has runs -------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("system_prompt", "Something else entirely."),
    ("tool_policy", {"shell": "write"}),
    ("model_settings", {"agent_model": "other-model"}),
    ("version", "v001b"),
])
def test_a_version_with_runs_cannot_change_what_the_agent_was_given(field, value):
    harness = make_harness("v001")
    make_run(harness=harness)
    stored = getattr(harness, field)
    setattr(harness, field, value)
    with pytest.raises(HarnessFrozenError) as excinfo:
        harness.save()
    assert "already has runs" in str(excinfo.value) and "Create a new version from v001" in str(excinfo.value)
    with pytest.raises(HarnessFrozenError):
        harness.save(update_fields=[field])
    assert getattr(Harness.objects.get(pk=harness.pk), field) == stored


def test_a_version_with_runs_can_still_change_status_and_metadata():
    harness = make_harness("v001", eval_metadata={"status": "promoted"})
    make_run(harness=harness)
    harness.status = Harness.Status.RETIRED
    harness.eval_metadata = {"status": "retired"}
    harness.save()
    harness.refresh_from_db()
    assert (harness.status, harness.eval_metadata) == ("retired", {"status": "retired"})


def test_a_version_without_runs_can_change():
    harness = make_harness("v002", status="draft")
    harness.system_prompt = "Edited before any run."
    harness.save()
    assert Harness.objects.get(pk=harness.pk).system_prompt == "Edited before any run."


# --- children ----------------------------------------------------------------------------------


def test_an_engineer_creates_a_child_draft_with_parent_author_and_audit(engineer):
    parent = make_harness("v001", eval_metadata={"version": "v001", "status": "promoted", "description": "Baseline"})
    child = parent.create_child(
        by=engineer, version="v002", system_prompt="New prompt.", tool_policy={"shell": "read-only", "x": 1},
        model_settings={"agent_model": "gpt-x"}, note="Adds rule x", drafted={"model": "m", "endpoint": "e"},
    )
    child.refresh_from_db()
    assert (child.parent, child.author, child.status) == (parent, engineer, Harness.Status.DRAFT)
    assert child.eval_metadata == {"version": "v002", "status": "draft", "description": "Adds rule x",
                                   "created_by": "eddie", "parent_version": "v001"}
    event = AuditEvent.objects.get(action="harness.create")
    assert (event.actor, event.object_id) == (engineer, str(child.pk))
    assert event.after["system_prompt"] == "New prompt." and event.after["parent"] == "v001"
    assert event.after["drafted_with"] == {"model": "m", "endpoint": "e"}


@pytest.mark.parametrize("role", ["approver", "reviewer"])
def test_only_engineers_create_children(request, role):
    parent = make_harness("v001")
    with pytest.raises(PermissionDenied):
        parent.create_child(by=request.getfixturevalue(role), version="v002", system_prompt="p",
                            tool_policy={}, model_settings={})
    assert not Harness.objects.filter(version="v002").exists()


def test_editing_a_draft_without_runs_is_audited(engineer):
    draft = make_harness("v002", status="draft", system_prompt="Old.")
    changed = draft.edit_config(by=engineer, system_prompt="New.", tool_policy=draft.tool_policy,
                                model_settings=draft.model_settings)
    assert changed == ["system_prompt"]
    assert Harness.objects.get(pk=draft.pk).system_prompt == "New."
    event = AuditEvent.objects.get(action="harness.edit")
    assert (event.before, event.after) == ({"system_prompt": "Old."}, {"system_prompt": "New."})


def test_editing_refuses_a_draft_with_runs_and_a_promoted_version(engineer):
    draft = make_harness("v002", status="draft")
    make_run(harness=draft)
    with pytest.raises(HarnessFrozenError):
        draft.edit_config(by=engineer, system_prompt="New.", tool_policy={}, model_settings={})
    promoted = make_harness("v001")
    with pytest.raises(HarnessStateError):
        promoted.edit_config(by=engineer, system_prompt="New.", tool_policy={}, model_settings={})
    assert not AuditEvent.objects.filter(action="harness.edit").exists()


def test_the_database_allows_one_promoted_version():
    make_harness("v001", status="promoted")
    with pytest.raises(IntegrityError), transaction.atomic():
        make_harness("v002", status="promoted")
    make_harness("v003", status="retired")
    make_harness("v004", status="retired")

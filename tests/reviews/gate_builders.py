"""An approved regression suite built straight in the database, for the gate tests.

Five runs of harness v001 with the seed's known mistakes in three of them, and one approved
case per run whose literal assertions and rubric the stand-in judge can check.
"""

from django.utils import timezone

from reviews.models import EvalCase, GateRun
from runs.models import Harness

from .builders import make_cycle, make_run

# (label, answer, eval_id, literal assertions, rubric, passes on this answer)
SUITE = [
    ("trace-01", "Runway is 11 months and burn is rising, so near-term financing risk is high.",
     "runway-financing-risk", [{"type": "icontains", "value": "11 months"}],
     'The answer must state the "11 months" runway.', True),
    ("trace-02", "ARR is $43.0M according to the board deck.",
     "finance-arr-first", [{"type": "contains", "value": "$36.9M"}],
     'The answer must lead with the finance-controlled "$36.9M" ARR.', False),
    ("trace-03", "Customer concentration is moderate: Northstar Bank is the largest legal entity at 21.1%.",
     "parent-rollup", [{"type": "icontains", "value": "Northstar Holdings"}],
     'The answer must roll up to "Northstar Holdings".', False),
    ("trace-04", 'Security: the sales deck says "SOC 2 complete".',
     "soc2-precision", [{"type": "not-contains", "value": "SOC 2 complete"}],
     'The answer must not say "SOC 2 complete".', False),
    ("trace-05", "Official NRR is unsupported; the 122% figure is a management estimate.",
     "nrr-unsupported", [{"type": "icontains", "value": "unsupported"}],
     'The answer must call official NRR "unsupported".', True),
]


def v001() -> Harness:
    return Harness.objects.get_or_create(version="v001", defaults={"system_prompt": "Be careful."})[0]


def approved_suite(approver, *, count: int = 5, cycle_name: str = "v001 review"):
    """(cycle, runs, cases): `count` runs with answers and one approved case each."""
    runs = [make_run(harness=v001(), label=spec[0], answer=spec[1]) for spec in SUITE[:count]]
    cycle = make_cycle(*runs, name=cycle_name)
    cases = []
    for run, (_, _, eval_id, assertions, rubric, _) in zip(runs, SUITE, strict=False):
        cases.append(EvalCase.objects.create(
            cycle=cycle, eval_id=eval_id, title=f"Case {eval_id}", scoring_method=EvalCase.ScoringMethod.HYBRID,
            expected_behavior="As the rubric says.", source_run=run, rubric=rubric, deterministic_assertions=assertions,
            status=EvalCase.Status.APPROVED, approved_by=approver, approved_at=timezone.now(),
        ))
    return cycle, runs, cases


def expected_passes(count: int = 5) -> dict[str, bool]:
    return {spec[2]: spec[5] for spec in SUITE[:count]}


def queued_gate(cycle, user=None) -> GateRun:
    return GateRun.objects.create(cycle=cycle, harness=cycle.harness, requested_by=user, heartbeat_at=timezone.now())

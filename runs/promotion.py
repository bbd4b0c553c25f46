"""What promotion reads: a candidate harness compared with its baseline, case by case.

The gate builds a `Comparison` from its results (the approved suite run on the baseline's
and on the candidate's answers) and hands it to `Harness.promote(by=..., comparison=...)`:

    Comparison(
        baseline=v001, candidate=v002,
        rows=[CaseResult(case_id="parent-rollup", title="Rolls up to parent accounts",
                         baseline_pass=True, candidate_pass=False,
                         baseline_score=1.0, candidate_score=0.0, ...)],
    )

- a *regression* passes on the baseline and fails on the candidate;
- an *unverified* case passes on the baseline and has no result on the candidate (not run);
- a *fix* fails on the baseline and passes on the candidate.

Promotion is refused while any regression or unverified case remains (`blocking`), and when
there is no comparison at all, unless the approver records an override reason.

Two readers of the gate's results, both from the database only:
- `comparison_for(candidate)`: the comparison the harness page offers to promote with
  (reviews/candidates.py builds it from the candidate and baseline gate runs);
- `pass_rate_history()`: gate pass rates per harness version, for the versions chart.
Each returns nothing (None, []) until gate results exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.apps import apps


class PromotionRefused(Exception):
    """Promotion is not allowed as things stand; the message says why and what would allow it."""

    def __init__(self, message: str, *, blocking: list["CaseResult"] | None = None):
        super().__init__(message)
        self.blocking = blocking or []


@dataclass(frozen=True)
class CaseResult:
    """One approved eval case on both sides. `None` on a side: the case has no result there."""

    case_id: str
    title: str = ""
    baseline_pass: bool | None = None
    candidate_pass: bool | None = None
    baseline_score: float | None = None
    candidate_score: float | None = None
    baseline_reason: str = ""
    candidate_reason: str = ""
    baseline_url: str = ""  # e.g. the baseline run's trace page
    candidate_url: str = ""

    @property
    def is_regression(self) -> bool:
        return self.baseline_pass is True and self.candidate_pass is False

    @property
    def is_unverified(self) -> bool:
        return self.baseline_pass is True and self.candidate_pass is None

    @property
    def is_fix(self) -> bool:
        return self.baseline_pass is False and self.candidate_pass is True

    @property
    def outcome(self) -> str:
        """regression | unverified | fix | pass | fail | new | missing (for CSS classes and sorting)."""
        if self.is_regression:
            return "regression"
        if self.is_unverified:
            return "unverified"
        if self.is_fix:
            return "fix"
        if self.baseline_pass is None:
            return "new" if self.candidate_pass is not None else "missing"
        if self.candidate_pass is None:
            return "missing"
        return "pass" if self.candidate_pass else "fail"

    def as_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id, "title": self.title,
            "baseline_pass": self.baseline_pass, "candidate_pass": self.candidate_pass,
            "baseline_score": self.baseline_score, "candidate_score": self.candidate_score,
        }


_OUTCOME_ORDER = {"regression": 0, "unverified": 1, "fix": 2, "fail": 3, "new": 4, "pass": 5, "missing": 6}


@dataclass(frozen=True)
class Comparison:
    """The approved suite on a baseline and a candidate harness version, row by row."""

    baseline: Any  # runs.models.Harness (or anything with `.version`)
    candidate: Any
    rows: tuple[CaseResult, ...] | list[CaseResult] = field(default_factory=tuple)
    source: str = ""  # what it was built from, e.g. "gate runs 12 (v001) and 15 (v002)"

    @property
    def regressions(self) -> list[CaseResult]:
        return [row for row in self.rows if row.is_regression]

    @property
    def unverified(self) -> list[CaseResult]:
        return [row for row in self.rows if row.is_unverified]

    @property
    def fixes(self) -> list[CaseResult]:
        return [row for row in self.rows if row.is_fix]

    @property
    def blocking(self) -> list[CaseResult]:
        """What stops promotion without an override: regressions, then baseline passes not run on the candidate."""
        return self.regressions + self.unverified

    @property
    def sorted_rows(self) -> list[CaseResult]:
        """Regressions first, then unverified, fixes, the rest (stable within each group)."""
        return sorted(self.rows, key=lambda row: _OUTCOME_ORDER[row.outcome])

    @staticmethod
    def _rate(values: list[bool | None]) -> float | None:
        known = [value for value in values if value is not None]
        return sum(1 for value in known if value) / len(known) if known else None

    @property
    def baseline_pass_rate(self) -> float | None:
        return self._rate([row.baseline_pass for row in self.rows])

    @property
    def candidate_pass_rate(self) -> float | None:
        return self._rate([row.candidate_pass for row in self.rows])

    @property
    def pass_rate_delta(self) -> float | None:
        """Candidate minus baseline pass rate (fractions, e.g. +0.4); None if a side has no results."""
        base, cand = self.baseline_pass_rate, self.candidate_pass_rate
        return None if base is None or cand is None else cand - base

    def summary(self) -> dict[str, Any]:
        """For the audit log."""
        return {
            "baseline": getattr(self.baseline, "version", str(self.baseline)),
            "candidate": getattr(self.candidate, "version", str(self.candidate)),
            "source": self.source,
            "cases": len(self.rows),
            "baseline_pass_rate": self.baseline_pass_rate,
            "candidate_pass_rate": self.candidate_pass_rate,
            "pass_rate_delta": self.pass_rate_delta,
            "regressions": [row.case_id for row in self.regressions],
            "unverified": [row.case_id for row in self.unverified],
            "fixes": [row.case_id for row in self.fixes],
        }


def check_promotion(*, candidate, comparison: Comparison | None, override_reason: str) -> None:
    """Raise PromotionRefused unless `candidate` may be promoted on this evidence."""
    if comparison is None:
        if not override_reason:
            raise PromotionRefused(
                f"There is no gate comparison for {candidate.version} yet. Evaluate it against the approved suite "
                f"first, or record an override reason to promote it without one."
            )
        return
    if getattr(comparison.candidate, "version", None) != candidate.version:
        raise PromotionRefused(
            f"This comparison is for {getattr(comparison.candidate, 'version', '?')}, not {candidate.version}."
        )
    blocking = comparison.blocking
    if blocking and not override_reason:
        names = ", ".join(row.case_id for row in blocking[:10]) + (" …" if len(blocking) > 10 else "")
        what = []
        if comparison.regressions:
            what.append(f"{len(comparison.regressions)} case(s) pass on {comparison.baseline.version} "
                        f"and fail on {candidate.version}")
        if comparison.unverified:
            what.append(f"{len(comparison.unverified)} case(s) pass on {comparison.baseline.version} "
                        f"and were not run on {candidate.version}")
        raise PromotionRefused(
            f"Promotion of {candidate.version} is refused: {' and '.join(what)} ({names}). "
            "Fix the regression in a new version, or record an override reason.",
            blocking=blocking,
        )


# --- hooks the gate fills in -----------------------------------------------------------------


def comparison_for(candidate) -> Comparison | None:
    """The comparison the harness page promotes with: the candidate's latest succeeded candidate gate
    run against its baseline gate run (reviews/candidates.py); None until it has been gated."""
    from reviews.candidates import latest_comparison  # reviews imports this module: import late

    return latest_comparison(candidate)


@dataclass(frozen=True)
class PassRatePoint:
    version: str
    pass_rate: float  # 0..1
    passed: int
    total: int
    at: datetime | None = None
    label: str = ""  # what the point is, e.g. "gate run 12"


def _gate_runs():
    """Finished gate runs, oldest first, or None while the app has no gate model."""
    try:
        model = apps.get_model("reviews", "GateRun")
    except LookupError:
        return None
    names = {f.name for f in model._meta.get_fields()}
    queryset = model.objects.all()
    if "status" in names:
        succeeded = getattr(getattr(model, "Status", None), "SUCCEEDED", "succeeded")
        queryset = queryset.filter(status=succeeded)
    if "harness" in names:
        queryset = queryset.select_related("harness").only(
            *(name for name in ("id", "harness__id", "harness__version", "passed", "total", "totals", "stats",
                                "finished_at", "created_at") if name.split("__")[0] in names)
        )
    elif "cycle" in names:
        queryset = queryset.select_related("cycle__harness")
    order = "finished_at" if "finished_at" in names else "created_at" if "created_at" in names else "pk"
    return queryset.order_by(order, "pk")


def point_from_gate_run(gate_run) -> PassRatePoint | None:
    """A chart point from a GateRun-like row: a harness through `harness` or `cycle.harness`, and
    counts from `passed`/`total` fields or a `totals`/`stats` dict ({passed, total} or
    promptfoo's {successes, failures}). None when the row says too little."""
    harness = getattr(gate_run, "harness", None) or getattr(getattr(gate_run, "cycle", None), "harness", None)
    if harness is None:
        return None
    passed, total = getattr(gate_run, "passed", None), getattr(gate_run, "total", None)
    for name in ("totals", "stats"):
        counts = getattr(gate_run, name, None)
        if (passed is None or total is None) and isinstance(counts, dict):
            passed = counts.get("passed", counts.get("successes"))
            total = counts.get("total")
            if total is None and passed is not None and counts.get("failures") is not None:
                total = passed + counts["failures"]
    try:
        passed, total = int(passed), int(total)
    except (TypeError, ValueError):
        return None
    if total <= 0:
        return None
    at = getattr(gate_run, "finished_at", None) or getattr(gate_run, "created_at", None)
    return PassRatePoint(version=harness.version, pass_rate=passed / total, passed=passed, total=total, at=at,
                         label=f"gate run {gate_run.pk}")


def pass_rate_history() -> list[PassRatePoint]:
    """Gate pass rates in time order, one point per finished gate run; [] until gate results exist."""
    gate_runs = _gate_runs()
    if gate_runs is None:
        return []
    return [point for point in map(point_from_gate_run, gate_runs) if point is not None]

"""What promotion reads: a candidate harness compared with its baseline, case by case.

The gate builds a `Comparison` from its results (the whole approved suite, judged on the baseline's
and on the candidate's answers) and hands it to `Harness.promote(by=..., comparison=...)`:

    Comparison(
        baseline=v001, candidate=v002,
        rows=[CaseResult(case_id="parent-rollup", title="Rolls up to parent accounts",
                         baseline_pass=True, candidate_pass=False,
                         baseline_score=1.0, candidate_score=0.0, ...)],
        needs_reason=["The judge is not calibrated: ..."],
    )

Every case of the suite is one row, and each row is exactly one of:
- a *regression*: passes on the baseline, fails on the candidate;
- a *fix*: fails on the baseline, passes on the candidate;
- *unchanged*: passes on both, or fails on both;
- *not verified* (`unverified`): no verdict on one side or both, because the case was not run there
  or its row errored (a failed run, no answer). Never counted as a pass.

Promotion is refused while any regression or not-verified case remains (`blocking`), while the
comparison names a reason the evidence is not trusted (`needs_reason`, e.g. an uncalibrated judge),
and when there is no comparison at all, unless the approver records an override reason (audited).
The pass rates and their delta are measured on the cases that have a verdict on both sides only.

Two readers of the gate's results, both filled in by reviews/ (which knows the gate) when it loads,
so that runs/ never imports reviews/ (loopsite.hooks, provided in reviews/apps.py):
- `comparison_for(candidate)`: the comparison the harness page offers to promote with;
- `pass_rate_history(agent=None)`: one point per harness version (of one agent), its pass rate on the current suite.
Each returns nothing (None, []) until gate results exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loopsite.hooks import Hook

PASS, FAIL, ERROR, NOT_RUN = "pass", "fail", "error", "not run"


class PromotionRefused(Exception):
    """Promotion is not allowed as things stand; the message says why and what would allow it."""

    def __init__(self, message: str, *, blocking: list["CaseResult"] | None = None):
        super().__init__(message)
        self.blocking = blocking or []


@dataclass(frozen=True)
class CaseResult:
    """One approved eval case on both sides. `None` on a side: no verdict there (not run, or errored);
    `*_state` says which ("pass", "fail", "error", "not run"; empty: taken from `*_pass`)."""

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
    baseline_state: str = ""
    candidate_state: str = ""

    @staticmethod
    def _state(passed: bool | None, state: str) -> str:
        if passed is not None:
            return PASS if passed else FAIL
        return state if state in (ERROR, NOT_RUN) else NOT_RUN

    @property
    def baseline_status(self) -> str:
        """pass | fail | error | not run"""
        return self._state(self.baseline_pass, self.baseline_state)

    @property
    def candidate_status(self) -> str:
        """pass | fail | error | not run"""
        return self._state(self.candidate_pass, self.candidate_state)

    @property
    def is_verified(self) -> bool:
        """Both sides have a verdict."""
        return self.baseline_pass is not None and self.candidate_pass is not None

    @property
    def is_regression(self) -> bool:
        return self.baseline_pass is True and self.candidate_pass is False

    @property
    def is_unverified(self) -> bool:
        return not self.is_verified

    @property
    def is_fix(self) -> bool:
        return self.baseline_pass is False and self.candidate_pass is True

    @property
    def is_unchanged(self) -> bool:
        return self.is_verified and self.baseline_pass == self.candidate_pass

    @property
    def outcome(self) -> str:
        """regression | unverified | fix | fail | pass (pass and fail: unchanged), for CSS classes and sorting."""
        if self.is_unverified:
            return "unverified"
        if self.is_regression:
            return "regression"
        if self.is_fix:
            return "fix"
        return "pass" if self.candidate_pass else "fail"

    @property
    def outcome_label(self) -> str:
        return {"regression": "regression", "unverified": "not verified", "fix": "fix",
                "pass": "unchanged (pass)", "fail": "unchanged (fail)"}[self.outcome]

    def as_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id, "title": self.title,
            "baseline_pass": self.baseline_pass, "candidate_pass": self.candidate_pass,
            "baseline_score": self.baseline_score, "candidate_score": self.candidate_score,
            "baseline_status": self.baseline_status, "candidate_status": self.candidate_status,
        }


_OUTCOME_ORDER = {"regression": 0, "unverified": 1, "fix": 2, "fail": 3, "pass": 4}


@dataclass(frozen=True)
class Comparison:
    """The approved suite on a baseline and a candidate harness version, one row per case of the suite."""

    baseline: Any  # runs.models.Harness (or anything with `.version`)
    candidate: Any
    rows: tuple[CaseResult, ...] | list[CaseResult] = field(default_factory=tuple)
    source: str = ""  # what it was built from, e.g. "gate runs 12 (v001) and 15 (v002)"
    # Why this evidence may not decide a promotion on its own (e.g. "the judge is not calibrated"):
    # each needs a recorded override reason, as a regression does.
    needs_reason: tuple[str, ...] | list[str] = field(default_factory=tuple)

    @property
    def regressions(self) -> list[CaseResult]:
        return [row for row in self.rows if row.is_regression]

    @property
    def unverified(self) -> list[CaseResult]:
        """Not verified: no verdict on the candidate or on the baseline (not run, or errored)."""
        return [row for row in self.rows if row.is_unverified]

    @property
    def fixes(self) -> list[CaseResult]:
        return [row for row in self.rows if row.is_fix]

    @property
    def unchanged(self) -> list[CaseResult]:
        return [row for row in self.rows if row.is_unchanged]

    @property
    def unchanged_passing(self) -> list[CaseResult]:
        return [row for row in self.unchanged if row.candidate_pass]

    @property
    def unchanged_failing(self) -> list[CaseResult]:
        return [row for row in self.unchanged if not row.candidate_pass]

    @property
    def verified(self) -> list[CaseResult]:
        """The cases with a verdict on both sides: what the pass rates and their delta are measured on."""
        return [row for row in self.rows if row.is_verified]

    @property
    def blocking(self) -> list[CaseResult]:
        """What stops promotion without an override: regressions, then cases not verified."""
        return self.regressions + self.unverified

    @property
    def override_needed(self) -> bool:
        return bool(self.blocking or self.needs_reason)

    @property
    def sorted_rows(self) -> list[CaseResult]:
        """Regressions first, then not verified, fixes, unchanged fails, unchanged passes (stable within each)."""
        return sorted(self.rows, key=lambda row: _OUTCOME_ORDER[row.outcome])

    def _rate(self, side: str) -> float | None:
        verified = self.verified
        if not verified:
            return None
        return sum(1 for row in verified if getattr(row, f"{side}_pass")) / len(verified)

    @property
    def baseline_pass_rate(self) -> float | None:
        """The baseline's pass rate on the cases both sides ran (None when there are none)."""
        return self._rate("baseline")

    @property
    def candidate_pass_rate(self) -> float | None:
        """The candidate's pass rate on the same cases as `baseline_pass_rate`."""
        return self._rate("candidate")

    @property
    def pass_rate_delta(self) -> float | None:
        """Candidate minus baseline pass rate on the same cases (fractions, e.g. +0.4); None without such cases."""
        base, cand = self.baseline_pass_rate, self.candidate_pass_rate
        return None if base is None or cand is None else cand - base

    def summary(self) -> dict[str, Any]:
        """For the audit log."""
        return {
            "baseline": getattr(self.baseline, "version", str(self.baseline)),
            "candidate": getattr(self.candidate, "version", str(self.candidate)),
            "source": self.source,
            "cases": len(self.rows),
            "verified_cases": len(self.verified),
            "baseline_pass_rate": self.baseline_pass_rate,
            "candidate_pass_rate": self.candidate_pass_rate,
            "pass_rate_delta": self.pass_rate_delta,
            "regressions": [row.case_id for row in self.regressions],
            "unverified": [row.case_id for row in self.unverified],
            "fixes": [row.case_id for row in self.fixes],
            "unchanged": [row.case_id for row in self.unchanged],
            "needs_reason": list(self.needs_reason),
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
    if override_reason or not comparison.override_needed:
        return
    blocking = comparison.blocking
    baseline = comparison.baseline.version
    what = []
    if comparison.regressions:
        what.append(f"{len(comparison.regressions)} case(s) pass on {baseline} and fail on {candidate.version}")
    if unverified := comparison.unverified:
        sides = []
        if missing := sum(1 for row in unverified if row.candidate_pass is None):
            sides.append(f"{missing} on {candidate.version}")
        if missing := sum(1 for row in unverified if row.baseline_pass is None):
            sides.append(f"{missing} on {baseline}")
        what.append(f"{len(unverified)} case(s) are not verified: not run or errored ({', '.join(sides)})")
    message = f"Promotion of {candidate.version} is refused: "
    if what:
        names = ", ".join(row.case_id for row in blocking[:10]) + (" …" if len(blocking) > 10 else "")
        message += f"{' and '.join(what)} ({names}). "
    if comparison.needs_reason:
        message += " ".join(f"{reason.rstrip('.')}." for reason in comparison.needs_reason) + " "
    if comparison.regressions:
        message += "Fix the regression in a new version, or record an override reason."
    elif blocking:
        message += "Re-run what is missing, or record an override reason."
    else:
        message += "Record an override reason to promote on this evidence."
    raise PromotionRefused(message, blocking=blocking)


# --- what reviews/ provides ------------------------------------------------------------------


# The comparison the harness page promotes with: the candidate's latest succeeded candidate gate run
# against its baseline gate run; None until it has been gated (or without a gate app).
comparison_for = Hook(default=lambda candidate: None)


@dataclass(frozen=True)
class PassRatePoint:
    """One harness version on the current suite: the latest verdict per case for its answers."""

    version: str
    pass_rate: float  # 0..1
    passed: int
    total: int  # cases it was measured on
    at: datetime | None = None  # when its latest counted gate result finished
    label: str = ""  # e.g. "5 of 10 suite cases"
    suite_size: int = 0


# One PassRatePoint per harness version (`agent=`: of that agent only), oldest version first; [] until gate
# results exist.
pass_rate_history = Hook(default=lambda agent=None: [])

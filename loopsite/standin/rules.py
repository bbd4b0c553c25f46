"""Harness rules the stand-in analyst knows about.

Each rule is a behaviour the seed's analyst gets wrong unless its harness says
otherwise. The analyst looks for a rule's trigger phrases (case-insensitive) in
its instructions; when one occurs it follows the rule, otherwise it makes the
seed's known mistake. `sentence` is the instruction a harness author adds to turn
the rule on; the stand-in HALO agent and "draft next harness from handoff" reuse it.

None of the triggers occur in harness v001's assembled instructions (or in the
Agents SDK's default sandbox prompt), and each sentence triggers its own rule only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    triggers: tuple[str, ...]
    sentence: str
    mistake: str  # what the analyst does while the harness is silent

    def is_on(self, instructions: str) -> bool:
        lower = instructions.lower()
        return any(trigger.lower() in lower for trigger in self.triggers)

    def is_on_for(self, active_ids: frozenset[str]) -> bool:
        return self.id in active_ids


SOURCE_OF_TRUTH_METRICS = Rule(
    id="source_of_truth_metrics",
    title="Finance-controlled exports are the source of truth for metrics",
    triggers=("source of truth", "source-of-truth", "finance-controlled"),
    sentence=(
        "Treat finance-controlled exports (for example an ARR bridge CSV) as the source of truth for "
        "headline metrics: when a board deck or management narrative reports a different figure, lead "
        "with the finance-controlled figure, cite both sources, and state the conflict explicitly."
    ),
    mistake="Leads with the board or narrative headline figure as the one to rely on and drops the contradiction.",
)

PARENT_ACCOUNT_ROLLUP = Rule(
    id="parent_account_rollup",
    title="Roll customer concentration up to parent accounts",
    triggers=("parent account", "parent-account", "roll up", "rollup", "roll-up"),
    sentence=(
        "For customer concentration, roll legal entities up to their parent account using any "
        "parent-account column or account hierarchy file, report the largest parent-account exposure "
        "and its share of ARR, and do not stop at the legal-entity view."
    ),
    mistake="Stops at the legal-entity view and reports the largest single legal entity.",
)

CERTIFICATION_PRECISION = Rule(
    id="certification_precision",
    title="State exact certification status",
    triggers=("certification status", "type i versus type ii", "audit report has been issued"),
    sentence=(
        "State the exact certification status (for example SOC 2 Type I complete versus Type II in "
        "progress, and whether an audit report has been issued), and treat sales or marketing wording "
        "such as \"SOC 2 complete\" as weaker evidence than security or audit documents."
    ),
    mistake="Repeats the sales wording (for example \"SOC 2 complete\") as the certification status.",
)

UNVALIDATED_ESTIMATES = Rule(
    id="unvalidated_estimates",
    title="Do not promote management estimates to official metrics",
    triggers=("unvalidated", "management estimate"),
    sentence=(
        "Do not report a management estimate or a metric flagged as unvalidated as an official metric: "
        "name the flag, say the official figure is unsupported, and keep the estimate out of headline "
        "conclusions."
    ),
    mistake="Reports the estimate (for example a 122% NRR) as the company's metric.",
)

RUNWAY_CONSEQUENCE = Rule(
    id="runway_consequence",
    title="State the runway in months and what it means for financing",
    triggers=("runway in months", "runway consequence"),
    sentence=(
        "When the dataroom reports a cash runway, state the runway in months together with the burn, and "
        "spell out what it means for near-term financing pressure (whether the company must raise, cut burn "
        "or improve cash generation soon) instead of calling it a generic red flag."
    ),
    mistake="Calls the runway a generic red flag without saying what it means for near-term financing.",
)

RULES: tuple[Rule, ...] = (
    SOURCE_OF_TRUTH_METRICS,
    PARENT_ACCOUNT_ROLLUP,
    CERTIFICATION_PRECISION,
    UNVALIDATED_ESTIMATES,
    RUNWAY_CONSEQUENCE,
)


def active_rule_ids(instructions: str) -> frozenset[str]:
    return frozenset(rule.id for rule in RULES if rule.is_on(instructions))


def rule_by_id(rule_id: str) -> Rule:
    for rule in RULES:
        if rule.id == rule_id:
            return rule
    raise KeyError(rule_id)

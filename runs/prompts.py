"""The user turn for each run, with the per-question rules the seed adds."""

QUESTION_HEADER = "Answer this diligence question using only the mounted dataroom:"


def build_user_prompt(question: str, *, harness_version: str) -> str:
    parts = [f"{QUESTION_HEADER}\n\n{question}\n", f"Active agent config: `{harness_version}`."]
    if asks_for_memo(question):
        parts.append(
            "The user asked for a memo-style deliverable. Return the memo content inline in your "
            "final answer and also write the required output artifacts. Do not answer only with a "
            "status update or artifact path list."
        )
    if asks_for_risk_categories(question):
        parts.append(
            "Structure the final answer with separate sections for Financial, Legal, and Customer "
            "concentration risks. Do not collapse customer concentration into the financial category."
        )
    if asks_for_net_revenue_retention(question):
        parts.append(
            "For net revenue retention, report the metric only if the dataroom directly provides "
            "NRR/net revenue retention. Do not derive or estimate an NRR percentage from ARR bridge "
            "components unless the user explicitly asks for an estimate. If the metric is absent, say "
            "it is unknown or unsupported, cite the searched source files, and separate missing "
            "evidence from any directional inference."
        )
    parts.append(
        "Also write the required output artifacts. Keep the answer concise, grounded, and citation-heavy.\n"
        "Use workspace-relative paths for shell commands and omit `workdir`; do not pass absolute "
        "temporary paths."
    )
    return "\n\n".join(parts) + "\n"


def asks_for_memo(question: str) -> bool:
    lower = question.lower()
    return "memo" in lower or "ic-style" in lower or "investment committee" in lower


def asks_for_risk_categories(question: str) -> bool:
    lower = question.lower()
    return all(term in lower for term in ("financial", "legal", "customer")) and "risk" in lower


def asks_for_net_revenue_retention(question: str) -> bool:
    lower = question.lower()
    return "net revenue retention" in lower or "nrr" in lower

"""The two runtime validators the agent runs inside its sandbox.

They are copied into the staged dataroom as `data/tools/<name>.py` and run there
with the sandbox's `python`, so they use the standard library only.
"""

from pathlib import Path

TOOLS_DIR = Path(__file__).resolve().parent
TOOL_NAMES = ["check_evidence_coverage.py", "validate_output_contract.py"]


def tool_sources() -> dict[str, str]:
    """File name -> source text of each validator."""
    return {name: (TOOLS_DIR / name).read_text(encoding="utf-8") for name in TOOL_NAMES}

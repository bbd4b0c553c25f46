"""The analyst role: a diligence agent working a dataroom through the sandbox shell.

The stand-in is stateless, so every request re-derives the next step from the
shell commands already run and their outputs:

0. probes: the commands the stand-in server was started with (`--probe-file`; tests use
   them to look around inside the agent's jail), in order. A command is never taken from
   the question or any other text of the conversation;
1. list the dataroom: `cat data/manifest.json` (or `find data -type f` without one);
2. search it: `grep -rciE '<question terms>' data` counts matching lines per file;
3. read the most relevant files with `cat data/<path>` (score: question terms in
   the path, plus grep counts), then files they mention in backticks, up to MAX_READS;
4. write the six artifacts and outputs/claim_audit_input.json in one heredoc command;
5. run the evidence coverage check, then the output contract check;
6. answer in Markdown, citing files as `path`.

What it concludes comes from findings.py, where the harness rules (rules.py)
switch between the correct behaviour and the seed's known mistakes.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from . import artifacts
from .conversation import Conversation, Reply, ToolCall
from .evidence import Evidence, cite, is_structured, terms
from .findings import Analysis, Question, analyse
from .rules import active_rule_ids

NAME = "analyst"
SHELL_TOOL = "exec_command"
QUESTION_HEADER = "Answer this diligence question using only the mounted dataroom:"  # as in runs/prompts.py

LIST_COMMAND = "cat data/manifest.json"
FIND_COMMAND = "find data -type f | sort"
COVERAGE_TOOL = "data/tools/check_evidence_coverage.py"
CONTRACT_TOOL = "data/tools/validate_output_contract.py"
COVERAGE_COMMAND = (f"python {COVERAGE_TOOL} --claims-json outputs/{artifacts.CLAIM_AUDIT_INPUT} "
                    "--dataset-root data --output outputs/evidence_coverage.json")
CONTRACT_COMMAND = (f"python {CONTRACT_TOOL} --outputs outputs --dataset-root data "
                    "--output outputs/output_contract_validation.json")

INITIAL_READS = 6  # the most relevant files
MAX_READS = 10  # ... plus files they point to, up to this many
MAX_STEPS = 26  # a safety net below the runner's max_turns
MAX_SEARCH_TERMS = 14


@dataclass(frozen=True)
class Step:
    cmd: str
    output: str
    exit_code: int | None

    @property
    def ok(self) -> bool:
        return self.exit_code in (0, None) and not self.output.startswith("Command timed out")


def matches(conv: Conversation) -> bool:
    return conv.offers_tool(SHELL_TOOL)


def reply(conv: Conversation, *, probe_commands: tuple[str, ...] = ()) -> Reply:
    state = State.of(conv, probe_commands=probe_commands)
    command = state.next_command()
    if command is not None:
        return Reply(tool_calls=(ToolCall(SHELL_TOOL, {"cmd": command}),))
    return Reply(text=state.final_answer())


# ------------------------------------------------------------------ reading the conversation


def question_of(user_text: str) -> str:
    """The question: the paragraph after QUESTION_HEADER, or the first paragraph of the message."""
    text = user_text.split(QUESTION_HEADER, 1)[1] if QUESTION_HEADER in user_text else user_text
    paragraphs = [part.strip() for part in re.split(r"\n\s*\n", text) if part.strip()]
    return paragraphs[0] if paragraphs else ""


def parse_tool_output(raw: str) -> tuple[int | None, str]:
    """The sandbox shell answers "Chunk ID: ..\\nWall time: ..\\nProcess exited with code N\\nOutput:\\n<text>"."""
    head, marker, body = raw.partition("Output:\n")
    if not marker:
        return None, raw
    code = re.search(r"Process exited with code (-?\d+)", head)
    return (int(code.group(1)) if code else None), body


def shell_steps(conv: Conversation) -> list[Step]:
    steps = []
    for exchange in conv.calls_to(SHELL_TOOL):
        if exchange.output is None:
            continue
        exit_code, output = parse_tool_output(exchange.output)
        steps.append(Step(cmd=str(exchange.arguments.get("cmd", "")), output=output, exit_code=exit_code))
    return steps


def listed_files(steps: list[Step]) -> list[str]:
    """Dataroom-relative paths from the manifest (or `find`) output."""
    for step in steps:
        if step.cmd == LIST_COMMAND and step.ok:
            try:
                manifest = json.loads(step.output)
            except json.JSONDecodeError:
                continue
            files = manifest.get("files") if isinstance(manifest, dict) else manifest
            if isinstance(files, list) and files:
                return [str(path).removeprefix("data/") for path in files]
        if step.cmd == FIND_COMMAND and step.ok:
            return [line.strip().removeprefix("data/") for line in step.output.splitlines()
                    if line.strip().startswith("data/")]
    return []


def readable(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return not (path.startswith("tools/") or name == "manifest.json" or name.startswith("."))


# ------------------------------------------------------------------ deciding the next step


@dataclass
class State:
    conv: Conversation
    question: Question
    steps: list[Step]
    probe_commands: tuple[str, ...] = ()

    @classmethod
    def of(cls, conv: Conversation, *, probe_commands: tuple[str, ...] = ()) -> State:
        user_text = conv.first_user_text
        return cls(conv=conv, question=Question(question_of(user_text), user_message=user_text),
                   steps=shell_steps(conv), probe_commands=tuple(probe_commands))

    def ran(self, command: str) -> bool:
        return any(step.cmd == command for step in self.steps)

    @property
    def all_files(self) -> list[str]:
        return listed_files(self.steps)

    @property
    def files(self) -> list[str]:
        return [path for path in self.all_files if readable(path)]

    @property
    def search_command(self) -> str | None:
        # Long words are cut to a stem so that "certification" also finds "certified" and "certificate".
        words = [term[:7] for term in self.question.expanded if term.isalpha() and len(term) >= 3]
        words = list(dict.fromkeys(words))[:MAX_SEARCH_TERMS]
        if not words:
            return None
        return f"grep -rciE '{'|'.join(words)}' data --exclude-dir=tools"

    @property
    def match_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for step in self.steps:
            if step.cmd == self.search_command:
                for line in step.output.splitlines():
                    path, _, count = line.rpartition(":")
                    if path.startswith("data/") and count.strip().isdigit():
                        counts[path.removeprefix("data/")] = int(count)
        return counts

    @property
    def texts_read(self) -> dict[str, str]:
        texts: dict[str, str] = {}
        for step in self.steps:
            match = re.fullmatch(r"cat (.+)", step.cmd)
            if match and step.ok and step.cmd != LIST_COMMAND:
                arguments = shlex.split(match.group(1))
                if len(arguments) == 1:
                    texts[arguments[0].removeprefix("data/")] = step.output
        return texts

    def reading_plan(self) -> list[str]:
        files = self.files
        direct, expanded = set(self.question.terms), set(self.question.expanded)
        counts = self.match_counts

        def score(path: str) -> int:
            path_terms = set(terms(path))
            count = counts.get(path, 0)
            structured_bonus = 2 if count and is_structured(path) else 0  # exports outrank narrative
            return 4 * len(path_terms & direct) + 2 * len(path_terms & expanded) + min(count, 4) + structured_bonus

        ranked = sorted((path for path in files if score(path) > 0), key=lambda path: (-score(path), path))
        # At most two files per folder first, so that a broad question reaches every relevant folder.
        plan: list[str] = []
        per_folder: dict[str, int] = {}
        for path in ranked:
            folder = path.rsplit("/", 1)[0] if "/" in path else ""
            if per_folder.get(folder, 0) < 2 and len(plan) < INITIAL_READS:
                plan.append(path)
                per_folder[folder] = per_folder.get(folder, 0) + 1
        plan += [path for path in ranked if path not in plan][:INITIAL_READS - len(plan)]
        plan = plan or files[:4]
        read = self.texts_read
        index = 0
        while index < len(plan) and len(plan) < MAX_READS:
            for reference in re.findall(r"`([^`\s]+\.[a-z]{2,4})`", read.get(plan[index], "")):
                reference = reference.removeprefix("data/")
                if reference in files and reference not in plan and len(plan) < MAX_READS:
                    plan.append(reference)
            index += 1
        return plan

    def tool_available(self, tool_path: str) -> bool:
        return tool_path in self.conv.instructions or tool_path.removeprefix("data/") in self.all_files

    def next_command(self) -> str | None:
        if len(self.steps) >= MAX_STEPS + len(self.probe_commands):
            return None
        for probe in self.probe_commands:
            if not self.ran(probe):
                return probe
        if not self.ran(LIST_COMMAND):
            return LIST_COMMAND
        if not self.all_files and not self.ran(FIND_COMMAND):
            return FIND_COMMAND
        search = self.search_command
        if search and self.files and not self.ran(search):
            return search
        read = self.texts_read
        for path in self.reading_plan():
            command = "cat " + shlex.quote("data/" + path)
            if path not in read and not self.ran(command):
                return command
        if not any(step.cmd.startswith(artifacts.WRITE_PREFIX) for step in self.steps):
            return artifacts.write_command(self.analysis())
        if self.tool_available(COVERAGE_TOOL) and not self.ran(COVERAGE_COMMAND):
            return COVERAGE_COMMAND
        if self.tool_available(CONTRACT_TOOL) and not self.ran(CONTRACT_COMMAND):
            return CONTRACT_COMMAND
        return None

    # -------------------------------------------------------------- answering

    def analysis(self) -> Analysis:
        evidence = Evidence.read(self.texts_read)
        return analyse(self.question, evidence, active_rule_ids(self.conv.instructions))

    def validator_line(self, command: str, label: str) -> str | None:
        step = next((step for step in self.steps if step.cmd == command), None)
        if step is None:
            return None
        try:
            result = json.loads(step.output)
        except json.JSONDecodeError:
            first = step.output.strip().splitlines()[-1:] or ["no output"]
            return f"- {label}: could not run ({first[0][:160]})."
        if result.get("passed"):
            supported = result.get("supported_claims")
            detail = f" ({len(supported)} claims supported)" if isinstance(supported, list) else ""
            return f"- {label}: passed{detail}."
        issues = result.get("issues") or result.get("unsupported_claims") or result.get("missing_citations") or []
        return f"- {label}: failed with {len(issues)} issue(s); see the outputs folder before relying on this answer."

    def final_answer(self) -> str:
        analysis = self.analysis()
        parts: list[str] = []
        for probe in self.probe_commands:
            step = next((step for step in self.steps if step.cmd == probe), None)
            output = (step.output if step else "(the command did not run)").rstrip("\n")
            fence = "````" if "```" in output else "```"
            parts.append(f"**Probe.** Output of `{probe}`:\n\n{fence}\n{output[:4000]}\n{fence}")
        parts.append(f"**Answer.** {analysis.lead}")
        if "separate sections for financial, legal, and customer" in self.question.user_message.lower():
            parts.append(_risk_sections(analysis))
        if analysis.supporting:
            parts.append("**Evidence**\n" + "\n".join(f"- {fact.text} {cite(fact.source)}"
                                                      for fact in analysis.supporting))
        if analysis.open_questions:
            parts.append("**Open questions**\n" + "\n".join(f"- {claim.text} {cite(*claim.sources)}"
                                                            for claim in analysis.open_questions[:4]))
        if "memo-style deliverable" in self.question.user_message.lower():
            parts.append("**Memo**\n\n" + artifacts.investment_memo(analysis).replace("# ", "### ", 1))
        checks = [line for line in (self.validator_line(COVERAGE_COMMAND, "Evidence coverage check"),
                                    self.validator_line(CONTRACT_COMMAND, "Output contract check")) if line]
        written = "The six required artifacts are in outputs/."
        parts.append("**Checks**\n" + "\n".join(checks + [f"- {written}"]))
        return "\n\n".join(parts) + "\n"


def _risk_sections(analysis: Analysis) -> str:
    sections = []
    for category in ("Financial", "Legal", "Customer concentration"):
        risks = [risk for risk in analysis.risks if risk.category == category]
        claims = [finding.lead for finding in analysis.findings if finding.category == category]
        lines = [f"### {category} risks"]
        lines += [f"- **{risk.severity}**: {risk.described} {cite(*risk.evidence)}" for risk in risks]
        lines += [f"- {lead}" for lead in claims if not risks]
        if len(lines) == 1:
            lines.append("- No material evidence in the files read.")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)

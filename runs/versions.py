"""Harness versions for the pages: diffs between two configs, the version tree, the pass-rate chart.

Plain functions returning plain data; templates escape everything (nothing here is marked safe).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any

from .models import Harness
from .promotion import PassRatePoint


# --- diffs ------------------------------------------------------------------------------------


@dataclass
class FieldDiff:
    name: str
    lines: list[tuple[str, str]]  # (kind, line): kind is add, del, hunk or same

    @property
    def changed(self) -> bool:
        return bool(self.lines)

    @property
    def added(self) -> int:
        return sum(1 for kind, _ in self.lines if kind == "add")

    @property
    def removed(self) -> int:
        return sum(1 for kind, _ in self.lines if kind == "del")


def _as_lines(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.splitlines()
    # Keys sorted: PostgreSQL's jsonb keeps its own key order, and a reordering is not a change.
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True).splitlines()


def unified(before: Any, after: Any, *, from_name: str = "a", to_name: str = "b", context: int = 3) -> list[tuple[str, str]]:
    """A unified diff as (kind, line) pairs; [] when nothing changed."""
    lines = []
    for line in difflib.unified_diff(_as_lines(before), _as_lines(after), fromfile=from_name, tofile=to_name,
                                     lineterm="", n=context):
        if line.startswith(("--- ", "+++ ")):
            kind = "file"
        else:
            kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "same")
        lines.append((kind, line))
    return lines


def harness_diff(a: Harness, b: Harness) -> list[FieldDiff]:
    """The assembled instructions (what the agent receives), then each config field, from a to b."""
    def diff(name: str, before: Any, after: Any) -> FieldDiff:
        return FieldDiff(name=name, lines=unified(before, after, from_name=f"{a.version}/{name}", to_name=f"{b.version}/{name}"))

    return [
        diff("assembled instructions", a.build_instructions(), b.build_instructions()),
        diff("system prompt", a.system_prompt, b.system_prompt),
        diff("tool policy", a.tool_policy or {}, b.tool_policy or {}),
        diff("model settings", a.model_settings or {}, b.model_settings or {}),
    ]


# --- the version tree -------------------------------------------------------------------------


@dataclass
class TreeRow:
    harness: Harness
    depth: int

    @property
    def indent(self) -> range:
        return range(self.depth)


def version_tree(harnesses: list[Harness]) -> list[TreeRow]:
    """Roots oldest first, each followed by its descendants (children oldest first), depth-first."""
    by_pk = {h.pk: h for h in harnesses}
    children: dict[int | None, list[Harness]] = {}
    for h in harnesses:
        parent = h.parent_id if h.parent_id in by_pk and h.parent_id != h.pk else None
        children.setdefault(parent, []).append(h)
    for kids in children.values():
        kids.sort(key=lambda h: (h.created_at, h.pk))
    rows: list[TreeRow] = []
    seen: set[int] = set()
    stack = [(h, 0) for h in reversed(children.get(None, []))]
    while stack:
        harness, depth = stack.pop()
        if harness.pk in seen:
            continue
        seen.add(harness.pk)
        rows.append(TreeRow(harness=harness, depth=depth))
        stack.extend((kid, depth + 1) for kid in reversed(children.get(harness.pk, [])))
    rows.extend(TreeRow(harness=h, depth=0) for h in harnesses if h.pk not in seen)  # parent cycles, never in practice
    return rows


# --- the pass-rate chart (inline SVG, drawn by the template from these numbers) ------------------


@dataclass
class ChartPoint:
    x: float
    y: float
    point: PassRatePoint

    @property
    def percent(self) -> int:
        return round(self.point.pass_rate * 100)


@dataclass
class Chart:
    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    points: list[ChartPoint] = field(default_factory=list)
    grid: list[tuple[float, str]] = field(default_factory=list)  # (y, label)

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)

    @property
    def bottom(self) -> int:
        return self.top + self.plot_height

    @property
    def right(self) -> int:
        return self.left + self.plot_width


def pass_rate_chart(points: list[PassRatePoint], *, width: int = 720, height: int = 220) -> Chart | None:
    """Coordinates for a line chart of pass rate (0-100 %), one point per version in order; None without points."""
    if not points:
        return None
    left, top, right_pad, bottom_pad = 44, 12, 16, 40
    chart = Chart(width=width, height=height, left=left, top=top,
                  plot_width=width - left - right_pad, plot_height=height - top - bottom_pad)
    chart.grid = [(top + chart.plot_height * (1 - pct / 100), f"{pct}%") for pct in (0, 25, 50, 75, 100)]
    step = chart.plot_width / (len(points) - 1) if len(points) > 1 else 0
    for index, point in enumerate(points):
        x = left + (step * index if len(points) > 1 else chart.plot_width / 2)
        y = top + chart.plot_height * (1 - max(0.0, min(1.0, point.pass_rate)))
        chart.points.append(ChartPoint(x=x, y=y, point=point))
    return chart

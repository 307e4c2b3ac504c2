"""RESULTS.md from the sections of the last run of each benchmark."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.harness import Figure, Section

HEADER = """# Tunewire benchmarks

Written by `{command}`; every benchmark runs Tunewire and the baseline a user would pick
instead side by side, in the same run, on the same seeded inputs, interleaved, after a
warm-up, with medians over the repeats. Ratios are Tunewire / baseline: above 1 is better
for throughputs, below 1 for times, latencies and memory. Benchmarks never fail on a
number; a missed goal is reported as missed. Re-run one with `python -m bench NAME`, all
with `make bench` (`make bench-quick` is the seconds-long CI variant, written to
`bench/.quick/`).
"""


def load_sections(directory: Path, order: list[str]) -> list[Section]:
    found = {p.stem: p for p in directory.glob("*.json")}
    names = [n for n in order if n in found] + sorted(set(found) - set(order))
    return [Section.from_json(json.loads(found[n].read_text())) for n in names]


def render(sections: list[Section], command: str) -> str:
    lines = [HEADER.format(command=command)]
    machines = {json.dumps(_stable(s.machine), sort_keys=True) for s in sections}
    if sections:
        lines += ["## Machine", ""]
        lines += _machine_table(sections[0].machine)
        if len(machines) > 1:
            lines += [
                "",
                "Sections were run at different times or places: each names its own "
                "machine details below where they differ.",
            ]
        lines.append("")
    lines += [
        "## Summary",
        "",
        "| benchmark | status | headline | goals met |",
        "| --- | --- | --- | --- |",
    ]
    for s in sections:
        goals = [f.met for f in s.figures if f.met is not None]
        met = f"{sum(goals)}/{len(goals)}" if goals else "-"
        lines.append(
            f"| [{s.title}](#{_anchor(s.title)}) | {s.status} | {_cell(s.summary)} | {met} |"
        )
    lines.append("")
    for s in sections:
        lines += _section(s, sections[0].machine)
    return "\n".join(lines).rstrip() + "\n"


def _section(s: Section, first_machine: dict) -> list[str]:
    lines = [f"## {s.title}", ""]
    if s.summary:
        lines += [f"**{s.status}.** {s.summary}", ""]
    else:
        lines += [f"**{s.status}.**", ""]
    if s.method:
        lines += [f"- {m}" for m in s.method] + [""]
    if s.figures:
        lines += [
            "| metric | Tunewire | baseline | baseline is | ratio | goal | met | spread / note |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        lines += [_row(f) for f in s.figures]
        lines.append("")
    if s.notes:
        lines += [f"- {n}" for n in s.notes] + [""]
    run = [
        f"Reproduce: `{s.command}`",
        f"finished {s.finished}",
        f"{s.seconds:.0f} s",
        f"torch threads {s.threads}",
        f"repeats {s.repeats}",
    ]
    if s.quick:
        run.append("QUICK MODE: figures only prove the code runs")
    load = s.machine.get("load_average")
    if load is not None:
        run.append(f"load average at start {load}")
    lines += [" · ".join(run), ""]
    differs = {k: v for k, v in _stable(s.machine).items() if _stable(first_machine).get(k) != v}
    if differs:
        lines += ["Machine differs: " + ", ".join(f"{k} {v}" for k, v in differs.items()), ""]
    return lines


def _row(f: Figure) -> str:
    ratio = f.ratio
    met = {True: "yes", False: "**no**", None: ""}[f.met]
    unit = f" {f.unit}" if f.unit else ""
    ours = _num(f.ours) + (unit if f.ours is not None else "")
    base = _num(f.baseline) + (unit if f.baseline is not None else "")
    notes = "; ".join(x for x in (f.spread, f.note) if x)
    return (
        f"| {_cell(f.metric)} | {ours} | {base} | {_cell(f.baseline_name)} | "
        f"{'' if ratio is None else f'{ratio:.2f}x'} | {_cell(f.goal)} | {met} | "
        f"{_cell(notes)} |"
    )


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01 or value == 0:
        return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.0f}"
    return f"{value:.2e}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _anchor(title: str) -> str:
    keep = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return keep.replace(" ", "-")


def _stable(machine: dict) -> dict:
    """Machine details without what changes from minute to minute."""
    return {k: v for k, v in machine.items() if k != "load_average"}


def _machine_table(machine: dict) -> list[str]:
    rows = ["| | |", "| --- | --- |"]
    for key, value in _stable(machine).items():
        rows.append(f"| {key} | {'none' if value is None else value} |")
    return rows

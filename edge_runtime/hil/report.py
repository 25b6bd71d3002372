"""The suite's report: JSON (everything), a table for the terminal, JUnit XML for CI."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from reachsafe.protocol.files import write_json_atomically

Status = Literal["passed", "failed", "skipped", "error"]


@dataclass(frozen=True)
class Check:
    """One pass criterion of a scenario and what was measured against it."""

    name: str
    passed: bool
    detail: str


@dataclass
class ScenarioResult:
    name: str
    status: Status
    seconds: float
    proves: str  # what a pass shows (docs/hil.md)
    checks: list[Check] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    message: str = ""  # why it was skipped, or the error that stopped it

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


@dataclass
class SuiteReport:
    robot: str
    bridge: str
    trainer: str
    seed: int
    started_unix: float
    scenarios: list[ScenarioResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No scenario failed or stopped with an error (skipped ones do not fail the suite)."""
        return all(s.status in ("passed", "skipped") for s in self.scenarios)

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self) | {"passed": self.passed})

    def write(self, out: Path) -> tuple[Path, Path]:
        """OUT/report.json and OUT/junit.xml."""
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomically(out / "report.json", self.to_dict())
        xml = out / "junit.xml"
        ET.ElementTree(junit(self)).write(xml, encoding="utf-8", xml_declaration=True)
        return out / "report.json", xml


def _finite(value: Any) -> Any:
    """JSON has no NaN: an unmeasured number is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _ms(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


COLUMNS = ("scenario", "result", "tick p50/p99 ms", "misses", "brakes", "sent/acked/lost", "shield", "s")


def format_table(report: SuiteReport) -> str:
    """One row per scenario, then each failed criterion, skip reason or error."""
    rows = []
    for s in report.scenarios:
        n = s.numbers
        brakes = ",".join(f"{k}:{v}" for k, v in sorted(n.get("brakes", {}).items())) or "-"
        uplink = f"{n['steps_sent']}/{n['steps_acked']}/{n['steps_lost']}" if "steps_sent" in n else "-"
        rows.append(
            (
                s.name,
                s.status.upper() if s.status in ("failed", "error") else s.status,
                f"{_ms(n.get('tick_ms_p50'))}/{_ms(n.get('tick_ms_p99'))}",
                str(n.get("deadline_misses", "-")),
                brakes,
                uplink,
                str(n.get("interventions", "-")),
                f"{s.seconds:.1f}",
            )
        )
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    for s in report.scenarios:
        for c in s.failures:
            lines.append(f"FAILED {s.name}: {c.name}: {c.detail}")
        if s.status == "error":
            lines.append(f"ERROR {s.name}: {s.message}")
        if s.status == "skipped":
            lines.append(f"skipped {s.name}: {s.message}")
    counts = {
        k: sum(1 for s in report.scenarios if s.status == k) for k in ("passed", "failed", "error", "skipped")
    }
    verdict = "PASSED" if report.passed else "FAILED"
    lines.append(f"{verdict}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return "\n".join(lines)


def junit(report: SuiteReport) -> ET.Element:
    """One testsuite `reachsafe-hil`, one testcase per scenario, its criteria in the failure text."""
    suite = ET.Element(
        "testsuite",
        name="reachsafe-hil",
        tests=str(len(report.scenarios)),
        failures=str(sum(s.status == "failed" for s in report.scenarios)),
        errors=str(sum(s.status == "error" for s in report.scenarios)),
        skipped=str(sum(s.status == "skipped" for s in report.scenarios)),
        time=f"{sum(s.seconds for s in report.scenarios):.3f}",
    )
    for s in report.scenarios:
        case = ET.SubElement(
            suite, "testcase", classname=f"hil.{report.robot}", name=s.name, time=f"{s.seconds:.3f}"
        )
        if s.status == "failed":
            text = "\n".join(f"{c.name}: {c.detail}" for c in s.failures)
            ET.SubElement(case, "failure", message=", ".join(c.name for c in s.failures)).text = text
        elif s.status == "error":
            ET.SubElement(case, "error", message=s.message[:500]).text = s.message
        elif s.status == "skipped":
            ET.SubElement(case, "skipped", message=s.message)
        out = "\n".join(f"{'ok  ' if c.passed else 'FAIL'} {c.name}: {c.detail}" for c in s.checks)
        ET.SubElement(case, "system-out").text = out + "\n" + json.dumps(_finite(s.numbers), sort_keys=True)
    return suite

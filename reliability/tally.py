"""What each part of the suite counts, and the table a run prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# gRPC codes that are never a fair answer to anything a client sends: the
# service maps every failure it knows to a deliberate code.
SERVER_FAULT_CODES = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS"})


@dataclass
class Tally:
    """One part's figures; `ok` is the part's own pass condition."""

    name: str
    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    # 5xx / INTERNAL / UNKNOWN answers where the request was the problem
    # (the fuzzers inject no upstream fault, so every such answer counts).
    server_errors: int = 0
    # Requests that should have succeeded and did not (the drains).
    failed: int = 0
    # Images an upstream produced (or a response promised) that reached
    # neither the caller nor a failure entry.
    images_lost: int = 0
    deaths: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Examples of what went wrong, for the report (never prompts or keys).
    examples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, outcome: str, *, server_error: bool = False, example: str = "") -> None:
        self.sent += 1
        self.outcomes[outcome] += 1
        if server_error:
            self.server_errors += 1
            if example and len(self.examples) < 5:
                self.examples.append(example)

    @property
    def ok(self) -> bool:
        return not (self.server_errors or self.failed or self.images_lost or self.deaths)


def _outcomes(counter: Counter[str], most: int = 6) -> str:
    shown = ", ".join(f"{name} {count}" for name, count in counter.most_common(most))
    rest = len(counter) - most
    return shown + (f", +{rest} more" if rest > 0 else "")


def table(tallies: list[Tally], memory: dict[str, str]) -> str:
    """The run's table (Markdown, so RELIABILITY.md can quote it as printed)."""
    lines = [
        "| part | requests | outcomes by kind | deaths | server errors to client errors "
        "| failed | paid images lost | time | pass |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for t in tallies:
        lines.append(
            f"| {t.name} | {t.sent} | {_outcomes(t.outcomes)} | {len(t.deaths)} "
            f"| {t.server_errors} | {t.failed} | {t.images_lost} | {t.seconds:.0f} s "
            f"| {'yes' if t.ok else 'NO'} |"
        )
    total = sum(t.sent for t in tallies)
    lines.append(
        f"| **total** | {total} | | {sum(len(t.deaths) for t in tallies)} "
        f"| {sum(t.server_errors for t in tallies)} | {sum(t.failed for t in tallies)} "
        f"| {sum(t.images_lost for t in tallies)} | {sum(t.seconds for t in tallies):.0f} s "
        f"| {'yes' if all(t.ok for t in tallies) else 'NO'} |"
    )
    lines.append("")
    lines.append("| memory | value |")
    lines.append("|---|---|")
    lines.extend(f"| {name} | {value} |" for name, value in memory.items())
    notes = [f"- {t.name}: {note}" for t in tallies for note in t.notes]
    problems = [f"- {t.name}: {e}" for t in tallies for e in (*t.deaths, *t.examples)]
    if notes:
        lines += ["", "Notes:", *notes]
    if problems:
        lines += ["", "Problems:", *problems]
    return "\n".join(lines)

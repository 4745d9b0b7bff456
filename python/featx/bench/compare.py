"""The regression gate: this run's result against an earlier one, case by case.

Pure functions over result documents (the JSON ``featx bench`` writes), so the verdicts can be
tested without timing anything. Throughput is compared as new images/s over old images/s; a case
below ``1 - threshold`` looks regressed. Shared machines are noisy, so a case that looks regressed
is measured again (``remeasure``) up to ``attempts`` times and fails only when every measurement
stays below the threshold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from featx.runtime.errors import FeatxError

FAILING = ("regressed", "parity-failed")
VERDICT_STYLE = {
    "ok": "green",
    "improved": "green",
    "recovered": "yellow",
    "regressed": "bold red",
    "parity-failed": "bold red",
    "unavailable": "yellow",
    "not-measured": "dim",
    "new": "dim",
    "no-baseline": "dim",
}


@dataclass
class Verdict:
    """One case's comparison. ``rates`` are this run's images/s: the first measurement, then
    any re-measurements."""

    case: str
    verdict: str
    old_rate: float | None = None
    rates: list[float] = field(default_factory=list)
    detail: str = ""

    @property
    def ratio(self) -> float | None:
        if self.old_rate is None or not self.rates:
            return None
        return max(self.rates) / self.old_rate


@dataclass
class GateResult:
    threshold: float
    verdicts: list[Verdict]

    @property
    def failures(self) -> list[Verdict]:
        return [verdict for verdict in self.verdicts if verdict.verdict in FAILING]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "passed": self.passed,
            "verdicts": [{**asdict(v), "ratio": v.ratio} for v in self.verdicts],
        }

    def print(self, console: Console) -> None:
        """One row per compared case; cases only in the baseline are counted, not listed."""
        table = Table(title=f"regression gate (threshold {self.threshold:.0%})")
        for column in ("case", "verdict", "old img/s", "new img/s", "new/old", "detail"):
            table.add_column(
                column, justify="right" if "/" in column else "left", no_wrap=column == "case"
            )
        baseline_only = 0
        for verdict in self.verdicts:
            if verdict.verdict == "not-measured":
                baseline_only += 1
                continue
            table.add_row(
                verdict.case,
                f"[{VERDICT_STYLE[verdict.verdict]}]{verdict.verdict}[/]",
                f"{verdict.old_rate:.1f}" if verdict.old_rate is not None else "",
                ", ".join(f"{rate:.1f}" for rate in verdict.rates),
                f"{verdict.ratio:.3f}" if verdict.ratio is not None else "",
                verdict.detail,
            )
        console.print(table)
        if baseline_only:
            console.print(f"{baseline_only} case(s) of the baseline were not measured in this run")
        if self.passed:
            console.print("[green]regression gate passed[/]")
        else:
            console.print(f"[bold red]regression gate FAILED: {len(self.failures)} case(s)[/]")


def load_result(path: str | Path) -> dict:
    """An earlier ``featx bench`` result, checked enough to compare against."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FeatxError(f"cannot read {path} as a featx bench result: {err}") from err
    if not isinstance(document, dict) or "rows" not in document or "environment" not in document:
        raise FeatxError(
            f"{path} is not a featx bench result (no 'rows' and 'environment'); compare against "
            "a file written by `featx bench --output`."
        )
    return document


def device_of(environment: dict) -> str:
    return environment.get("gpu") or environment["device"]


def matching_cases(old: dict, environment: dict, case_ids: list[str]) -> list[str]:
    """The cases of this run that ``old`` has timings for. Raises FeatxError when ``old`` was
    measured on another device or shares no case with this run: such a comparison means nothing."""
    if device_of(old["environment"]) != device_of(environment):
        raise FeatxError(
            f"the baseline was measured on {device_of(old['environment'])!r}, this run is on "
            f"{device_of(environment)!r}; compare against a result from the same device."
        )
    timed = {row["id"] for row in old["rows"] if row["status"] == "ok"}
    matching = [case for case in case_ids if case in timed]
    if not matching:
        raise FeatxError(
            f"the baseline has no timed case among this run's {len(case_ids)} cases; run the "
            "same --model, --backends, --batch-sizes and --device as the baseline."
        )
    return matching


def compare_results(old: dict, new: dict, threshold: float) -> list[Verdict]:
    """Verdicts for every case of either document, from one measurement each."""
    old_rows = {row["id"]: row for row in old["rows"]}
    new_rows = {row["id"]: row for row in new["rows"]}
    verdicts = []
    for case, row in new_rows.items():
        before = old_rows.get(case)
        if before is None:
            verdicts.append(Verdict(case, "new", detail="not in the baseline"))
        elif before["status"] != "ok":
            verdicts.append(Verdict(case, "no-baseline", detail=f"baseline {before['status']}"))
        elif row["status"] == "failing-parity":
            verdicts.append(
                Verdict(case, "parity-failed", before["images_per_s"], [], row["reason"])
            )
        elif row["status"] == "unavailable":
            verdicts.append(Verdict(case, "unavailable", before["images_per_s"], [], row["reason"]))
        else:
            verdict = Verdict(case, "ok", before["images_per_s"], [row["images_per_s"]])
            verdict.verdict = _judge(verdict.ratio, threshold)
            verdicts.append(verdict)
    verdicts += [
        Verdict(case, "not-measured", row["images_per_s"], detail="in the baseline only")
        for case, row in old_rows.items()
        if case not in new_rows
    ]
    return verdicts


def _judge(ratio: float, threshold: float) -> str:
    if ratio < 1 - threshold:
        return "regressed"
    return "improved" if ratio > 1 + threshold else "ok"


def regression_gate(
    old: dict,
    new: dict,
    threshold: float,
    remeasure: Callable[[str], dict] | None = None,
    attempts: int = 2,
) -> GateResult:
    """Compares ``new`` with ``old``; each case that looks regressed is measured again with
    ``remeasure(case_id) -> row`` up to ``attempts`` times and passes ("recovered") as soon as
    one measurement is within the threshold."""
    verdicts = compare_results(old, new, threshold)
    for verdict in verdicts:
        if verdict.verdict != "regressed" or remeasure is None:
            continue
        for _ in range(attempts):
            row = remeasure(verdict.case)
            if row["status"] != "ok":
                failed = row["status"] == "failing-parity"
                verdict.verdict = "parity-failed" if failed else "unavailable"
                verdict.detail = row["reason"]
                break
            verdict.rates.append(row["images_per_s"])
            if verdict.rates[-1] / verdict.old_rate >= 1 - threshold:
                verdict.verdict = "recovered"
                verdict.detail = f"re-measured {len(verdict.rates) - 1}x"
                break
        else:
            verdict.detail = f"still regressed after {attempts} re-measurements"
    return GateResult(threshold, verdicts)

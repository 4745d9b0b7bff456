"""Result rows and how they are shown: the rich table, the JSON document, the bar chart.

A row is a plain dict (it is what the JSON holds and what the regression gate reads back):
the case's fields, ``status`` (``ok``, ``failing-parity``: not timed, never shown as fast, or
``unavailable``: with the reason), the timing, images/s, the speedups and the parity figures.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from featx.bench.backends import Prepared
from featx.bench.cases import Case
from featx.bench.environment import environment
from featx.bench.timing import Timing
from featx.runtime.files import write_atomic

STATUSES = ("ok", "failing-parity", "unavailable")
SHORT_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int8": "int8"}
TABLE_WIDTH = 190
"""Wide enough for every column unwrapped; narrower terminals scroll rather than squash."""
STATUS_STYLE = {"ok": "green", "failing-parity": "bold red", "unavailable": "dim"}


def make_row(
    case: Case,
    *,
    status: str,
    reason: str = "",
    parity: dict | None = None,
    work: Prepared | None = None,
    timing: Timing | None = None,
) -> dict:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    images_per_run = work.images_per_run if work is not None else None
    return {
        **case.to_dict(),
        "status": status,
        "reason": reason,
        "note": work.note if work is not None else "",
        "prepare_s": round(work.prepare_s, 3) if work is not None else None,
        "images_per_run": images_per_run,
        "timing": timing.to_dict() if timing is not None else None,
        "images_per_s": images_per_run / timing.median_s if timing and images_per_run else None,
        "tflops": _tflops(work, timing),
        "parity": parity,
    }


def _tflops(work: Prepared | None, timing: Timing | None) -> float | None:
    if work is None or timing is None or work.flops is None:
        return None
    return work.flops / timing.median_s / 1e12


def with_speedups(rows: list[dict]) -> list[dict]:
    """Rows with ``speedup_vs_reference`` (over the kind's reference: eager fp32 for a model,
    cuDNN channels_last for a conv block, SDPA for attention, the eager loop or PIL for the
    extraction kinds) and ``speedup_vs_same_dtype`` (over eager at the row's dtype): images/s
    over the reference's images/s; None where either side has no timing."""
    rate = {row["id"]: row["images_per_s"] for row in rows}
    out = []
    for row in rows:
        case = case_of(row)
        out.append(
            {
                **row,
                "speedup_vs_reference": _ratio(row["images_per_s"], rate.get(case.reference().id)),
                "speedup_vs_same_dtype": _ratio(
                    row["images_per_s"], rate.get(case.same_dtype_reference().id)
                ),
            }
        )
    return out


def case_of(row: dict) -> Case:
    return Case(
        row["kind"], row["model"], row["backend"], row["batch_size"], row["device"], row["dtype"]
    )


def _ratio(value: float | None, reference: float | None) -> float | None:
    return value / reference if value is not None and reference else None


def print_table(document: dict, console: Console) -> None:
    """The rows as a table, one section per kind; reasons and notes follow it."""
    env = document["environment"]
    device = env.get("gpu", env["device"]) if _any_cuda(document) else env["device"]
    table = Table(title=f"featx bench on {device} (commit {env.get('commit') or 'unknown'})")
    for column in ("kind", "model", "backend", "dtype", "bs", "status"):
        table.add_column(column, no_wrap=True)
    for column in (
        "median ms",
        "p20-p80 ms",
        "img/s",
        "TFLOP/s",
        "vs ref",
        "vs dtype",
        "parity cos / rel",
    ):
        table.add_column(column, justify="right", no_wrap=True)
    kind = None
    for row in document["rows"]:
        if kind is not None and row["kind"] != kind:
            table.add_section()
        kind = row["kind"]
        timing = row["timing"]
        parity = row["parity"]
        table.add_row(
            row["kind"],
            row["model"],
            row["backend"],
            SHORT_DTYPE[row["dtype"]],
            str(row["batch_size"]),
            f"[{STATUS_STYLE[row['status']]}]{row['status']}[/]",
            f"{timing['median_s'] * 1e3:.2f}" if timing else "",
            f"{timing['p20_s'] * 1e3:.2f}-{timing['p80_s'] * 1e3:.2f}" if timing else "",
            f"{row['images_per_s']:.1f}" if row["images_per_s"] else "",
            f"{row['tflops']:.2f}" if row.get("tflops") else "",
            _times(row["speedup_vs_reference"]),
            _times(row["speedup_vs_same_dtype"]),
            _parity_cell(parity),
        )
    wide_console(console).print(table)
    explained = {}
    for row in document["rows"]:
        text = row["reason"] or row["note"]
        if text:
            explained.setdefault(f"{row['kind']} {row['backend']}: {text}", None)
    for line in explained:
        console.print(f"  {line}", soft_wrap=True)


def wide_console(console: Console) -> Console:
    """``console`` at least TABLE_WIDTH wide: result tables scroll rather than squash."""
    return Console(
        file=console.file,
        width=max(console.width, TABLE_WIDTH),
        force_terminal=console.is_terminal,
        highlight=False,
    )


def _parity_cell(parity: dict | None) -> str:
    """min cosine / max-abs over scale, or for an int8 row its export gate's figures."""
    if not parity:
        return ""
    if parity.get("max_rel") is None:
        return (
            f"{parity['min_cosine']:.6f} mean {parity['mean_cosine']:.6f} "
            f"R@10 {parity['recall_at_10']:.3f}"
        )
    return f"{parity['min_cosine']:.6f} / {parity['max_rel']:.1e}"


def _times(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else ""


def _any_cuda(document: dict) -> bool:
    return any(row["device"] == "cuda" for row in document["rows"])


def write_json(document: dict, path: Path) -> None:
    write_atomic(path, (json.dumps(document, indent=1) + "\n").encode())


def show_and_write_rows(console: Console, title: str, rows: list[dict], path: Path | None) -> None:
    """A report script's rows (plain dicts, one key set) as a rich table, and, with ``path``,
    as ``{"environment", "rows"}`` JSON written atomically."""
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(_figure(value) for value in row.values()))
    console.print(table)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json({"environment": environment(), "rows": rows}, path)
        console.print(f"wrote {path}")


def _figure(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if abs(value) < 0.01 else f"{value:.7g}"
    return str(value)


def write_plot(document: dict, path: Path) -> None:
    """One panel per kind and model: images/s per backend, one bar per batch size. Failing
    parity is drawn as a red cross at zero, so it can never read as a fast bar."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in document["rows"]:
        if row["status"] != "unavailable":
            groups.setdefault((row["kind"], row["model"], row["device"]), []).append(row)
    height = 3.2 * max(1, len(groups))
    figure, axes = pyplot.subplots(len(groups), 1, figsize=(10, height), squeeze=False)
    for axis, ((kind, model, device), rows) in zip(axes[:, 0], groups.items(), strict=True):
        backends = list(dict.fromkeys(f"{row['backend']}" for row in rows))
        batches = sorted({row["batch_size"] for row in rows})
        width = 0.8 / len(batches)
        for slot, batch in enumerate(batches):
            for row in (r for r in rows if r["batch_size"] == batch):
                x = backends.index(row["backend"]) + (slot - (len(batches) - 1) / 2) * width
                if row["status"] == "failing-parity":
                    axis.plot(x, 0, "x", color="red", markersize=10, markeredgewidth=2)
                    continue
                axis.bar(x, row["images_per_s"], width, color=f"C{slot}")
                axis.annotate(
                    f"{row['images_per_s']:.3g}",
                    (x, row["images_per_s"]),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        axis.set_xticks(range(len(backends)), backends)
        axis.set_ylabel("images/s")
        failing = any(row["status"] == "failing-parity" for row in rows)
        marker = " (red x: fails parity, not timed)" if failing else ""
        axis.set_title(f"{kind}: {model} on {device}{marker}", fontsize=10)
        handles = [pyplot.Rectangle((0, 0), 1, 1, color=f"C{i}") for i in range(len(batches))]
        axis.legend(
            handles,
            [f"batch {b}" for b in batches],
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
        )
    env = document["environment"]
    figure.suptitle(f"featx bench, {env.get('gpu', env['device'])}, commit {env.get('commit')}")
    # Room above the first panel's title for the figure's own (half an inch).
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.5 / height))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    pyplot.close(figure)
    write_atomic(path, buffer.getvalue())

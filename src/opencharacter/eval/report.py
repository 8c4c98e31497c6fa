"""`scores.json`, `report.md` and a PNG chart, in one shape for every suite.

Every suite's scores.json has the same top-level keys, so `eval compare` reads any of them:

    suite, title, model, judges, scale, headline,
    metrics   {name: {mean, std, n}}             averaged over judges (the number to quote)
    by_judge  {judge: {name: {mean, std, n}}}    each judge on its own
    counts    {questions, answers, failed: {stage: n}, failures}
    notes     [str]                              how the numbers were computed
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opencharacter.engine.manifest import write_json_atomic

SCORES = "scores.json"
REPORT = "report.md"
CHART = "scores.png"


def fmt(cell: dict[str, Any] | None, digits: int = 2) -> str:
    """'4.12 ± 0.31' (or '—' when nothing was scored)."""
    if not cell or cell.get("mean") is None:
        return "—"
    text = f"{cell['mean']:.{digits}f}"
    if cell.get("std") is not None:
        text += f" ± {cell['std']:.{digits}f}"
    return text


def write_scores(out: Path, scores: dict[str, Any]) -> Path:
    path = out / SCORES
    write_json_atomic(path, scores)
    return path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def scores_table(scores: dict[str, Any], digits: int = 2) -> tuple[list[str], list[list[str]]]:
    """Rows: metrics. Columns: each judge, then the average (or one 'score' column without judges)."""
    judges = list(scores.get("by_judge") or {})
    header = ["metric", *judges, "average" if judges else "score", "n"]
    rows = []
    for name, cell in scores["metrics"].items():
        per_judge = [fmt(scores["by_judge"][j].get(name), digits) for j in judges]
        rows.append([name, *per_judge, fmt(cell, digits), str(cell.get("n", ""))])
    return header, rows


def write_report(out: Path, scores: dict[str, Any], chart: Path | None, digits: int = 2) -> Path:
    """report.md: the table, the counts, the failures and how to retry them, the notes."""
    header, rows = scores_table(scores, digits)
    counts = scores.get("counts", {})
    parts = [
        f"# {scores.get('title', scores['suite'])}: {scores.get('model', '')}",
        "",
        f"Judges: {', '.join(scores.get('judges') or []) or 'none'}."
        + (f" Scale: {scores['scale'][0]}-{scores['scale'][1]}." if scores.get("scale") else "")
        + " Cells are mean ± standard deviation.",
        "",
        markdown_table(header, rows),
        "",
        "## Counts",
        "",
        markdown_table(["what", "number"], [[k, str(v)] for k, v in counts.items() if k != "failed"]),
    ]
    failed = {k: v for k, v in (counts.get("failed") or {}).items() if v}
    if failed:
        parts += [
            "",
            "## Failures",
            "",
            "These tasks produced no record (see `failures.jsonl` for each error). They are not counted "
            "as any score. Run the same command again to retry them.",
            "",
            markdown_table(["stage", "failed"], [[k, str(v)] for k, v in failed.items()]),
        ]
    if chart is not None:
        parts += ["", f"![scores]({chart.name})"]
    notes = scores.get("notes") or []
    if notes:
        parts += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    path = out / REPORT
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def figure(width: float, height: float) -> Any:
    """A bare Agg figure: no pyplot, so no display backend and no global state (and a faster import)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure(figsize=(width, height))


def draw_bars(ax: Any, title: str, metrics: list[str], series: dict[str, list[float | None]],
              errors: dict[str, list[float | None]] | None = None, scale: tuple[float, float] | None = None,
              ylabel: str = "score", colors: dict[str, str] | None = None, legend: bool | None = None) -> None:
    """Grouped bars on `ax`: one group per metric, one bar per series, std as error bars.

    `colors` keeps a series' colour the same across several axes (e.g. one run in every panel).
    """
    names = list(series)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [m + (i - (len(names) - 1) / 2) * width for m in range(len(metrics))]
        heights = [v if v is not None else 0.0 for v in series[name]]
        err = [e or 0.0 for e in errors[name]] if errors and name in errors else None
        bars = ax.bar(xs, heights, width, label=name, yerr=err, capsize=3 if err else 0,
                      color=(colors or {}).get(name))
        for bar, value in zip(bars, series[name], strict=True):
            if value is not None and (len(names) <= 4 or i == len(names) - 1):  # legible up to 4
                # At the foot of the bar, where the error bar does not cover it.
                ax.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, 0), ha="center", va="bottom",
                            fontsize=7, color="white", xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([m.replace(" ", "\n") for m in metrics], fontsize=8)
    if scale is not None:
        ax.set_ylim(0, scale[1] * 1.1)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if legend or (legend is None and len(names) > 1):
        ax.legend(fontsize=8)


def bar_chart(path: Path, title: str, metrics: list[str], series: dict[str, list[float | None]],
              errors: dict[str, list[float | None]] | None = None, scale: tuple[float, float] | None = None,
              ylabel: str = "score") -> Path | None:
    """A PNG of grouped bars. None when matplotlib is missing."""
    fig = figure(min(12.0, 2.0 + len(metrics) * (0.5 + 0.3 * len(series))), 4.5)
    if fig is None:
        return None
    draw_bars(fig.subplots(), title, metrics, series, errors, scale, ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def write_chart(out: Path, scores: dict[str, Any]) -> Path | None:
    """The suite's chart: each metric, per judge and averaged, with std as error bars."""
    metrics = list(scores["metrics"])
    series: dict[str, list[float | None]] = {}
    errors: dict[str, list[float | None]] = {}
    for judge, cells in (scores.get("by_judge") or {}).items():
        series[judge] = [cells.get(m, {}).get("mean") for m in metrics]
        errors[judge] = [cells.get(m, {}).get("std") for m in metrics]
    label = "average" if series else "score"
    series[label] = [scores["metrics"][m].get("mean") for m in metrics]
    errors[label] = [scores["metrics"][m].get("std") for m in metrics]
    scale = scores.get("scale")
    return bar_chart(out / CHART, f"{scores.get('title', scores['suite'])}: {scores.get('model', '')}",
                     metrics, series, errors, tuple(scale) if scale else None)


def write_all(out: Path, scores: dict[str, Any], digits: int = 2) -> dict[str, Path | None]:
    """scores.json, the chart (skipped with a note when matplotlib is missing) and report.md."""
    chart = write_chart(out, scores)
    if chart is None:
        scores.setdefault("notes", []).append("No chart: install the eval extra (pip install 'opencharacter[eval]').")
    return {"scores": write_scores(out, scores), "chart": chart, "report": write_report(out, scores, chart, digits)}

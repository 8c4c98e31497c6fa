"""`eval compare`: several result folders side by side, e.g. a base model and its fine-tune.

One table (metrics as rows, runs as columns, a Δ column for two runs) and one chart (a panel per
suite, since scales differ between suites), each run with its number of questions and failures,
so a better score bought by silently failing the hard questions shows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from opencharacter.engine.manifest import write_json_atomic
from opencharacter.eval.report import SCORES, draw_bars, figure, fmt, markdown_table
from opencharacter.io.readers import InputError


def load_scores(run: Path) -> dict[str, Any]:
    """A run's scores.json (the folder or the file); errors say which run and why."""
    path = run / SCORES if run.is_dir() else run
    if not path.is_file():
        raise InputError(str(path), None, "no scores.json: not an eval result folder, or the run has not finished "
                         "(run its command again to finish it)")
    try:
        scores = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(str(path), exc.lineno, f"invalid JSON ({exc.msg})") from exc
    if not isinstance(scores, dict) or not isinstance(scores.get("metrics"), dict) or "suite" not in scores:
        raise InputError(str(path), None, "not an eval scores.json (no suite / metrics)")
    return scores


def _labels(runs: list[Path], labels: list[str] | None) -> list[str]:
    if labels:
        if len(labels) != len(runs):
            raise InputError("--label", None, f"{len(labels)} labels for {len(runs)} runs: give one per run")
        return labels
    names = [r.resolve().name if r.is_dir() else r.resolve().parent.name for r in runs]
    if len(set(names)) < len(names):  # same folder names in different places: add the parent
        names = [f"{r.resolve().parent.name}/{n}" for r, n in zip(runs, names, strict=True)]
    return names


def compare(runs: list[Path], labels: list[str] | None = None) -> dict[str, Any]:
    """{labels, runs: [{label, path, suite, model, counts}], rows: [{suite, metric, values: [cell|None]}]}."""
    if not runs:
        raise InputError("compare", None, "give at least one result folder")
    names = _labels(runs, labels)
    loaded = [load_scores(r) for r in runs]
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for scores in loaded:
        for metric in scores["metrics"]:
            key = (scores["suite"], metric)
            if key not in seen:
                seen.add(key)
                rows.append({"suite": scores["suite"], "metric": metric, "scale": scores.get("scale"),
                             "values": [s["metrics"].get(metric) if s["suite"] == key[0] else None for s in loaded]})
    info = [{"label": n, "path": str(r), "suite": s["suite"], "title": s.get("title", s["suite"]),
             "model": s.get("model", ""), "judges": s.get("judges", []), "questions": s.get("counts", {}).get("questions"),
             "failures": s.get("counts", {}).get("failures", 0)}
            for n, r, s in zip(names, runs, loaded, strict=True)]
    return {"labels": names, "runs": info, "rows": rows}


def table(comparison: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Rows: each suite's metrics, then questions and failures per run; Δ (second − first) for two runs."""
    labels = comparison["labels"]
    delta = len(labels) == 2
    suites = {r["suite"] for r in comparison["rows"]}
    header = ["metric", *labels, *(["Δ"] if delta else [])]
    rows = []
    for row in comparison["rows"]:
        digits = 3 if row["suite"] == "rolebench" else 2
        name = row["metric"] if len(suites) == 1 else f"{row['suite']}: {row['metric']}"
        cells = [fmt(v, digits) for v in row["values"]]
        if delta:
            a, b = (v.get("mean") if v else None for v in row["values"])
            cells.append(f"{b - a:+.{digits}f}" if a is not None and b is not None else "—")
        rows.append([name, *cells])
    rows.append(["questions", *[str(r["questions"]) for r in comparison["runs"]], *([""] if delta else [])])
    rows.append(["failures", *[str(r["failures"]) for r in comparison["runs"]], *([""] if delta else [])])
    return header, rows


def chart(comparison: dict[str, Any], path: Path) -> Path | None:
    """One figure, a panel per suite: bars per metric, one per run, std as error bars."""
    suites = list(dict.fromkeys(r["suite"] for r in comparison["rows"]))
    widths = [len([r for r in comparison["rows"] if r["suite"] == s]) for s in suites]
    fig = figure(min(16.0, 2.0 + sum(widths) * (0.5 + 0.3 * len(comparison["labels"]))), 4.8)
    if fig is None:
        return None
    axes = fig.subplots(1, len(suites), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    colors = {label: f"C{i % 10}" for i, label in enumerate(comparison["labels"])}  # a run keeps its colour
    for ax, suite in zip(axes, suites, strict=True):
        rows = [r for r in comparison["rows"] if r["suite"] == suite]
        present = [i for i, run in enumerate(comparison["runs"]) if run["suite"] == suite]
        series = {comparison["labels"][i]: [(r["values"][i] or {}).get("mean") for r in rows] for i in present}
        errors = {comparison["labels"][i]: [(r["values"][i] or {}).get("std") for r in rows] for i in present}
        scale = rows[0]["scale"]
        draw_bars(ax, suite, [r["metric"] for r in rows], series, errors, tuple(scale) if scale else None,
                  colors=colors, legend=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def write_comparison(comparison: dict[str, Any], out: Path) -> dict[str, Path | None]:
    """compare.json, compare.md (the table, with each run's model and path) and compare.png."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "compare.json", comparison)
    png = chart(comparison, out / "compare.png")
    header, rows = table(comparison)
    runs = markdown_table(["run", "suite", "model", "judges", "questions", "failures", "folder"], [
        [r["label"], r["title"], r["model"], ", ".join(r["judges"]), str(r["questions"]), str(r["failures"]), r["path"]]
        for r in comparison["runs"]])
    text = "\n".join([
        "# Comparison", "", markdown_table(header, rows), "", "Cells are mean ± standard deviation"
        + (", Δ is the second run minus the first." if len(comparison["labels"]) == 2 else "."), "",
        "## Runs", "", runs, *(["", "![comparison](compare.png)"] if png else []), "",
    ])
    (out / "compare.md").write_text(text, encoding="utf-8")
    return {"json": out / "compare.json", "report": out / "compare.md", "chart": png}

"""The main job's report: ``results.json``, the results table (printed, ``report.md``,
``report.html``), loss curves and pictures under ``figures/``."""

from __future__ import annotations

import html
import json
from pathlib import Path

from .stages import write_json_atomic

TASK_TITLES = {
    "retrieval": "image-text retrieval", "vqa": "VQA", "nlvr2": "NLVR2", "caption": "captioning",
    "grounding": "phrase grounding", "refexp": "referring expressions", "detection": "detection",
    "detection_zero_shot": "detection, zero-shot",
}


# Every metric of the report is on a 0-100 scale (%, CIDEr x 100, AP x 100). A task "beats" its
# baseline only by at least this much: +0.03 CIDEr from a captioner that gives three sentences
# for 300 images is a tie, not a result.
MARGIN = 1.0


def beats_baseline(result: dict) -> bool:
    """Whether a task result is at least :data:`MARGIN` points above its baseline."""
    return result["value"] >= result["baseline_value"] + MARGIN


def results_table(tasks: dict[str, dict]) -> list[list[str]]:
    """Rows ``[task, metric, baseline, baseline value, fibervl, beats it]``."""
    rows = []
    for name, r in tasks.items():
        beats = "yes" if beats_baseline(r) else "NO"
        rows.append([TASK_TITLES.get(name, name), r["metric"], r["baseline"], f"{r['baseline_value']:.2f}",
                     f"{r['value']:.2f}", beats])
    return rows


HEADER = ["task", "metric", "baseline", "baseline value", "fibervl", "beats baseline (by >= 1 pt)"]


def breakdown_lines(tasks: dict[str, dict]) -> list[str]:
    """Lines "title: parts" for each task whose result splits its value (``result["breakdown"]``, e.g.
    VQA by answer type, REC by expressions that name a held-out shape)."""
    return [f"{TASK_TITLES.get(name, name)}: {r['breakdown']}" for name, r in tasks.items() if r.get("breakdown")]


def format_text_table(rows: list[list[str]]) -> str:
    """A fixed-width table for the terminal, every metric and baseline named in full."""
    widths = [max(len(x) for x in col) for col in zip(HEADER, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(HEADER), line(["-" * w for w in widths])] + [line(r) for r in rows])


def markdown_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(out)


def loss_curves(stage_dirs: dict[str, Path], path: Path) -> Path | None:
    """One panel per stage: the training loss over steps (from the engine's metrics.jsonl)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for name, d in stage_dirs.items():
        f = d / "metrics.jsonl"
        if not f.is_file():
            continue
        points = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
        xy = [(p["step"], p["loss"]) for p in points if isinstance(p.get("loss"), (int, float))]
        if xy:
            series[name] = xy
    if not series:
        return None
    cols = min(4, len(series))
    rows = (len(series) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, (name, xy) in zip(axes.flat, series.items()):
        ax.plot([p[0] for p in xy], [p[1] for p in xy], lw=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(ctx, summary: dict) -> dict:
    """Write results.json, figures, report.md and report.html into ``ctx.out``; print the table."""
    from .pictures import draw_all

    out = ctx.out
    figures = out / "figures"
    stage_dirs = {name: ctx.runner.stage_dir(name) for name in summary["stages"] if name != "data"}
    pictures: dict[str, str] = {}
    curve = loss_curves(stage_dirs, figures / "loss_curves.png")
    if curve:
        pictures["training loss of every stage"] = str(curve.relative_to(out))
    try:
        pictures.update(draw_all(ctx, figures))
    except Exception as err:  # noqa: BLE001 - pictures are a courtesy; the numbers stand without them
        ctx.echo(f"warning: pictures were not drawn: {type(err).__name__}: {err}")
    summary["figures"] = pictures
    write_json_atomic(out / "results.json", summary)
    rows = results_table(summary["tasks"])
    stage_lines = "\n".join(f"| {name} | {sec:.0f} |" for name, sec in summary["stages"].items())
    md = [f"# fibervl main job: preset `{summary['preset']}`", "",
          f"Data: `{summary['data']}`. Every number is measured on the test split, which no stage trains on; "
          "the baselines are computed on the same items.", "", markdown_table(rows), "",
          *(f"- {line}" for line in breakdown_lines(summary["tasks"])), "",
          "## Wall time of each stage (seconds)", "", "| stage | seconds |", "|---|---|", stage_lines,
          f"| **total** | {summary['total_seconds']:.0f} |", ""]
    for title, rel in pictures.items():
        md += [f"## {title}", "", f"![{title}]({rel})", ""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    (out / "report.html").write_text(_html(summary, rows, pictures), encoding="utf-8")
    ctx.echo("\n" + format_text_table(rows))
    for line in breakdown_lines(summary["tasks"]):
        ctx.echo(line)
    ctx.echo(f"\nreport: {out / 'report.md'} (and report.html, results.json, figures/)")
    return summary


def _html(summary: dict, rows: list[list[str]], pictures: dict[str, str]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    stages = "".join(f"<tr><td>{esc(k)}</td><td>{v:.0f}</td></tr>" for k, v in summary["stages"].items())
    figs = "".join(f"<h2>{esc(t)}</h2><img src='{esc(p)}' style='max-width:100%'>" for t, p in pictures.items())
    parts = "".join(f"<li>{esc(line)}</li>" for line in breakdown_lines(summary["tasks"]))
    return (f"<!doctype html><meta charset='utf-8'><title>fibervl {esc(summary['preset'])}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{border:1px solid #ccc;padding:4px}"
            "table{border-collapse:collapse}</style>"
            f"<h1>fibervl main job: preset {esc(summary['preset'])}</h1>"
            f"<table><tr>{head}</tr>{body}</table><ul>{parts}</ul><h2>wall time (s)</h2><table>{stages}"
            f"<tr><td><b>total</b></td><td>{summary['total_seconds']:.0f}</td></tr></table>{figs}")

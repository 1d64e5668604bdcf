"""The sweep's self-contained ``report.html``: table, heatmaps, noise verdicts, every case's
training curves, and overlays of the best and the worst case (images embedded as base64, so the
file opens from disk anywhere)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

from tomoseg.io.writers import write_text
from tomoseg.utils.format import fmt, plural


def _img(path: Path, width: str = "100%") -> str:
    if not path.is_file():
        return f"<p><em>missing: {html.escape(path.name)}</em></p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:{width}">'


def write_report(out: Path, meta: dict, records: list[dict], stats: list) -> Path:
    """Write ``out/report.html`` atomically and return its path."""
    from tomoseg.experiments.cells import noise_verdicts, size_label

    coi = meta["class_of_interest"]
    done = [r for r in records if r["status"] == "done"]
    best_case = max(done, key=lambda r: r["iou"][coi] or -1, default=None)
    worst_case = min(
        done, key=lambda r: r["iou"][coi] if r["iou"][coi] is not None else 2, default=None
    )
    best_cell, verdicts = noise_verdicts(stats, "iou")
    limit = f", at most {meta['max_minutes']} min" if meta.get("max_minutes") else ""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>tomoseg sweep</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}.failed{color:#b00}</style></head><body>",
        f"<h1>Crop sweep on {html.escape(Path(meta['data']).name)}</h1>",
        f"<p>data: {html.escape(meta['data'])}; class of interest: <b>{html.escape(coi)}</b>; "
        f"{plural(meta['epochs'], 'epoch')} per case{limit}; "
        f"{len(done)} of {plural(len(records), 'case')} finished, {sum(r['status'] == 'failed' for r in records)} failed.</p>",
    ]
    if best_cell is not None:
        parts.append(
            f"<h2>Best</h2><p>Best cell by mean test IoU of {html.escape(coi)}: <b>{size_label(best_cell.size)} px x "
            f"{plural(best_cell.count, 'crop')}</b>: IoU {fmt(best_cell.iou_mean)} %"
            + (f" ± {fmt(best_cell.iou_std)}" if not math.isnan(best_cell.iou_std) else "")
            + f", BF1 {fmt(best_cell.bf1_mean)} % (over {plural(best_cell.n, 'repeat')}).</p>"
        )
        same = [c for c, within in verdicts if within]
        if any(c.n > 1 for c in stats):
            names = ", ".join(f"{size_label(c.size)}x{c.count}" for c in same) or "none"
            parts.append(
                "<p>Cells whose mean IoU lies within the noise of the best (difference at most two standard "
                f"errors of the difference, over the repeats): <b>{names}</b>. The others are worse beyond that noise.</p>"
            )
        else:
            parts.append(
                "<p>One repeat per cell: no noise estimate; rerun with <code>--repeats 2</code> or more to tell real differences from seed noise.</p>"
            )
    parts.append("<h2>Heatmaps</h2><div style='display:flex;gap:1em'>")
    parts += [_img(out / "heatmap_iou.png", "49%"), _img(out / "heatmap_bf1.png", "49%"), "</div>"]
    parts.append(
        "<h2>All cases</h2><table><tr><th>case</th><th>size</th><th>count</th><th>repeat</th><th>seed</th>"
        f"<th>accuracy %</th><th>IoU {html.escape(coi)} %</th><th>BF1 {html.escape(coi)} %</th><th>epochs</th><th>s/epoch</th><th>status</th></tr>"
    )
    for r in records:
        ok = r["status"] == "done"
        parts.append(
            f"<tr class='{'' if ok else 'failed'}'><td>{r['id']}</td><td>{size_label(r['size'])}</td><td>{r['count']}</td>"
            f"<td>{r['repeat']}</td><td>{r['seed']}</td><td>{fmt(r.get('accuracy')) if ok else ''}</td>"
            f"<td>{fmt(r['iou'][coi]) if ok else ''}</td><td>{fmt(r['bf1'][coi]) if ok else ''}</td>"
            f"<td>{r.get('epochs', '')}</td><td>{format(r['seconds_per_epoch'], '.1f') if ok else ''}</td>"
            f"<td>{html.escape(r['status'] + (': ' + r['error'] if r.get('error') else ''))}</td></tr>"
        )
    parts.append("</table>")
    for title, case in (("Best case", best_case), ("Worst case", worst_case)):
        if case is None:
            continue
        panels = sorted((out / "cases" / case["id"] / "eval" / "panels").glob("*.png"))
        parts.append(
            f"<h2>{title}: {case['id']} (IoU {fmt(case['iou'][coi])} %)</h2>"
            "<p>image | truth | prediction | overlay (true positive white, true negative black, false negative pink, false positive green)</p>"
        )
        parts.append(_img(panels[0]) if panels else "<p><em>no overlay</em></p>")
    parts.append("<h2>Training curves of every case</h2>")
    for r in records:
        if r["status"] == "done":
            parts.append(
                f"<h3>{r['id']}</h3>" + _img(out / "cases" / r["id"] / "run" / "curves.png")
            )
    parts.append("</body></html>")
    return write_text(out / "report.html", "\n".join(parts))

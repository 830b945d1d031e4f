"""Writers: Markdown, one CSV per table, one self-contained HTML page (inline PNG, CSS and one small
inline script that sorts a table by the column whose header is clicked; nothing external).

:func:`write_report` builds the whole output folder in a temporary sibling and swaps it into
place, so OUTDIR is either the complete new report or left as it was. An existing OUTDIR is only
replaced if it is empty or an earlier report (it holds ``report.json``).
"""

from __future__ import annotations

import base64
import ctypes
import datetime as _dt
import html
import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterable

import pandas as pd

from core_eval._io import atomic_write  # noqa: F401  (re-exported)
from core_eval.report.errors import ReportError
from core_eval.report.retention import KEEP
from core_eval.report.run import short_model

SCHEMA = "core-eval-report/v1"
FORMATS = ("md", "csv", "html")

#: Columns shown in Markdown / HTML (CSV files have all columns).
SHOWN = {
    "comparison": ["model", "task", "metric", "filter", "label", "n", "n_dropped", "baseline", "score", "delta",
                   "rel_delta", "ci_low", "ci_high", "p_value", "n_lost", "n_gained", "stats"],
    "runs": ["label", "run", "model", "compared_to", "harness_model", "variant", "rule", "n_heads", "frac_heads",
             "heads", "tasks", "path"],
    "curves": ["model", "task", "metric", "variant", "rule", "n_heads", "frac_heads", "score", "delta", "ci_low",
               "ci_high", "label"],
    "causal": ["model", "harness", "task", "metric", "variant", "n_heads", "frac_heads", "rule", "label", "n_runs",
               "n", "baseline", "score", "delta", "ci_low", "ci_high", "p_value", "n_lost", "n_gained", "test"],
    "verdict": ["model", "harness", "task", "metric", "variant", "n_heads", "control", "verdict", "top_score",
                "control_score", "diff", "ci_low", "ci_high", "p_value", "n", "n_control_runs"],
    "retention": ["model", "harness", "task", "metric", "label", "n_heads", "frac_heads", "verdict", "baseline",
                  "score", "retention", "retention_low", "retention_high", "n", "vs_random", "random_score", "diff",
                  "diff_low", "diff_high", "n_random_runs", "note"],
}

ABOUT = {
    "verdict": "Does ablating the top heads hurt more than each control of the same size? diff = score(top) - "
               "score(control), paired sample by sample (control seeds pooled); CI: Newcombe's paired score "
               "interval (0/1 metrics) or the paired bootstrap; p: McNemar's exact test.",
    "retention": "Hybrid sparse attention: does each run keep the share `keep` of its baseline? retention = "
                 "score / baseline (baseline / score for a lower-is-better metric), CI = 1 + CI(delta) / baseline "
                 "with the baseline treated as fixed; keeps: CI above keep, loses: CI below it. CoRe (top) rows "
                 "also give diff = score(CoRe) - score(random full heads) of the same size, paired sample by "
                 "sample (random seeds pooled).",
    "leaderboard": "Primary metric per task as reported by the harness, the mean over the tasks every run has, "
                   "and Δ vs each model's own baseline (paired samples).",
    "comparison": "Every run vs its baseline, per task / metric / filter, over the samples both runs share "
                  "(paired on doc_id + prompt hash). CI: paired bootstrap of the mean difference; p: McNemar's "
                  "exact test (binary metrics). n_lost / n_gained: samples the baseline got right and the run "
                  "wrong / the reverse.",
    "causal": "Causal test: ablating the top heads vs bottom, random and layer-matched random sets of the "
              "same size (compare rows with equal n_heads). Runs of several seeds are pooled (n_runs): delta, "
              "CI and p come from the pooled paired differences, not from averaged per-seed bounds.",
    "curves": "Ablation curves: score vs size of the ablated head set, one line per selection rule; "
              "x = 0 is the baseline.",
    "speed": "Hybrid sparse attention: accuracy vs measured speedup (baseline = 1.0).",
    "runs": "Runs and the intervention each recorded.",
    "notes": "What was not compared, and why. Read these before the numbers.",
}

_INT = {"n", "n_dropped", "n_heads", "n_lost", "n_gained", "n_runs", "n_control_runs", "n_random_runs", "layer", "head",
        "ram_rank"}
_SIGNED = {"delta", "ci_low", "ci_high", "diff", "diff_low", "diff_high"}


def fmt(col: str, v) -> str:
    """Display format of one cell."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        try:
            if col in _INT or col == "n_tasks":
                return str(int(v))
            if col == "p_value":
                return f"{v:.3g}"
            if col == "rel_delta":
                return f"{v * 100:+.1f}%"
            if col == "frac_heads":
                return f"{v * 100:.1f}%"
            if col == "speedup":
                return f"{v:.2f}×"
            if col in _SIGNED or col.startswith("Δ"):
                return f"{v:+.4f}"
            return f"{v:.4f}" if isinstance(v, float) else str(v)
        except (TypeError, ValueError):
            return str(v)
    return str(v)


def _shown(name: str, df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in SHOWN.get(name, list(df.columns)) if c in df.columns]
    out = df[cols].copy()
    if "model" in cols:
        out["model"] = [short_model(m) if isinstance(m, str) and m else m for m in out["model"]]
    return pd.DataFrame({c: [fmt(c, v) for v in out[c]] for c in cols}, columns=cols)


def markdown_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_\n"
    cols = list(df.columns)

    def cell(x) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _params_lines(report) -> list[str]:
    p = report.params
    return [f"- paired bootstrap: {p['n_boot']} resamples, seed {p['seed']}, {100 * (1 - p['alpha']):g}% CI",
            f"- samples paired on: {p['pairing']}",
            f"- sparse retention threshold (keep): {p.get('keep', KEEP):g} of the baseline",
            "- primary metrics: " + (", ".join(f"{t}: {m}" for t, m in p["primary_metrics"].items()) or "none")]


def verdict_lines(report) -> list[str]:
    """The verdict, one sentence per (task, control); what the report says first."""
    v = getattr(report, "verdict", None)
    if v is None or v.empty:
        return ["No causal test in these runs (it needs a top run and a bottom / random / layer_matched_random "
                "run of the same size)."]
    return [str(x) for x in v.summary]


def sparse_lines(report) -> list[str]:
    """The sparse retention verdict, one sentence per (sparse run, task); none without sparse runs."""
    r = getattr(report, "retention", None)
    return [] if r is None or r.empty else [str(x) for x in r.summary]


def render_markdown(report, plot_dir: str | None = "plots") -> str:
    sparse = sparse_lines(report)
    out = [f"# {report.title}\n", "**Verdict**\n", *[f"- {line}" for line in verdict_lines(report)], "",
           *_params_lines(report), "",
           *(["**Sparse retention**\n", *[f"- {line}" for line in sparse], ""] if sparse else [])]
    n_warn = int((report.notes.level == "warning").sum()) if len(report.notes) else 0
    out.append(f"**Notes: {len(report.notes)} ({n_warn} warnings)** — see the Notes section.\n")
    for name, df in report.tables().items():
        out.append(f"## {name.capitalize()}\n\n{report.about.get(name) or ABOUT.get(name, '')}\n")
        fig = {"comparison": "deltas"}.get(name, name)
        if plot_dir is not None and fig in report.figures:
            out.append(f"![{fig}]({plot_dir}/{fig}.png)\n")
        out.append(markdown_table(_shown(name, df)))
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#222;max-width:1600px}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;cursor:pointer;user-select:none}th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}.t{text-align:left}
tr.warning td{background:#fff4e0}p.about{color:#555;max-width:70em}
ul.verdict li{margin:.2em 0}
img{max-width:100%;border:1px solid #eee}.scroll{overflow-x:auto}
"""

#: Sorts a table by the clicked header: numbers by the cell's data-v value, text by its text; a second click reverses.
_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.title = "click to sort";
    th.addEventListener("click", function () {
      var desc = th.getAttribute("aria-sort") === "ascending";
      table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", desc ? "descending" : "ascending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col];
        var v = cell.getAttribute("data-v");
        return v !== null && v !== "" ? [0, parseFloat(v)] : [cell.textContent === "" ? 2 : 1, cell.textContent];
      }
      rows.sort(function (a, b) {
        var ka = key(a), kb = key(b);
        if (ka[0] !== kb[0]) { return ka[0] - kb[0]; }
        var c = ka[0] === 0 ? ka[1] - kb[1] : String(ka[1]).localeCompare(String(kb[1]));
        return desc ? -c : c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def _raw(v) -> str:
    """A cell's sortable numeric value ('' for text and missing values)."""
    if isinstance(v, bool) or v is None:
        return ""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(f) else repr(f)


def _html_table(name: str, df: pd.DataFrame) -> str:
    shown = _shown(name, df)
    if shown.empty:
        return "<p><em>(none)</em></p>"
    num = [c in df.columns and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
           for c in shown.columns]
    head = "".join(f'<th{"" if n else " class=t"}>{html.escape(str(c))}</th>' for c, n in zip(shown.columns, num))
    body = []
    levels = list(df["level"]) if name == "notes" and "level" in df.columns else [""] * len(shown)
    raw = df[[c for c in shown.columns]].reset_index(drop=True) if len(df) == len(shown) else None
    for i, (lvl, row) in enumerate(zip(levels, shown.itertuples(index=False))):
        cls = f' class="{html.escape(lvl)}"' if lvl else ""
        cells = []
        for j, (x, n) in enumerate(zip(row, num)):
            dv = _raw(raw.iat[i, j]) if (n and raw is not None) else ""
            attr = f' data-v="{dv}"' if dv else ""
            cells.append(f'<td{"" if n else " class=t"}{attr}>{html.escape(str(x))}</td>')
        body.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table class="sortable" id="table-{name}"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(body) + "</tbody></table></div>")


def render_html(report) -> str:
    """One self-contained page: inline CSS, figures as base64 PNG, one inline sorting script, no external links."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
        '<h2 id="verdict-summary">Verdict</h2><ul class="verdict">',
        *[f"<li>{html.escape(line)}</li>" for line in verdict_lines(report)], "</ul><ul>",
        *[f"<li>{html.escape(line[2:])}</li>" for line in _params_lines(report)], "</ul>",
    ]
    sparse = sparse_lines(report)
    if sparse:
        parts += ['<h2 id="retention-summary">Sparse retention</h2><ul class="verdict">',
                  *[f"<li>{html.escape(line)}</li>" for line in sparse], "</ul>"]
    n_warn = int((report.notes.level == "warning").sum()) if len(report.notes) else 0
    parts.append(f'<p><strong>Notes: {len(report.notes)} ({n_warn} warnings)</strong> — '
                 f'<a href="#notes">read them</a> before the numbers. Click a column header to sort a table.</p>')
    for name, df in report.tables().items():
        parts.append(f'<h2 id="{html.escape(name)}">{html.escape(name.capitalize())}</h2>')
        parts.append(f'<p class="about">{html.escape(report.about.get(name) or ABOUT.get(name, ""))}</p>')
        fig = {"comparison": "deltas"}.get(name, name)
        if fig in report.figures:
            b64 = base64.b64encode(report.figures[fig]).decode("ascii")
            parts.append(f'<img id="fig-{html.escape(fig)}" alt="{html.escape(fig)} plot" '
                         f'src="data:image/png;base64,{b64}">')
        parts.append(_html_table(name, df))
    created = _dt.datetime.now().isoformat(timespec="seconds")
    parts.append(f"<p class=\"about\">Generated by core-eval report, {html.escape(created)}.</p>")
    parts.append(f"<script>{_SORT_JS}</script></body></html>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------- atomic output


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


def _check_replaceable(outdir: Path) -> None:
    if not outdir.exists():
        return
    if not outdir.is_dir():
        raise ReportError(f"{outdir} exists and is not a folder")
    manifest = outdir / "report.json"
    if any(outdir.iterdir()) and not manifest.is_file():
        raise ReportError(f"{outdir} exists and is not a core-eval report folder (no report.json); "
                          "choose another output folder or empty it")


def _files(report, formats: tuple[str, ...]) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    if "csv" in formats:
        for name, df in report.tables().items():
            files[f"{name}.csv"] = df.to_csv(index=False).encode("utf-8")
    if "md" in formats:
        files["report.md"] = render_markdown(report).encode("utf-8")
        for name, png in report.figures.items():
            files[f"plots/{name}.png"] = png
    if "html" in formats:
        files["report.html"] = render_html(report).encode("utf-8")
    manifest = {
        "schema": SCHEMA, "title": report.title, "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "params": report.params, "files": sorted(files) + ["report.json"],
        "runs": [{"run": r.name, "label": report.labels[r.name], "path": str(r.path),
                  "baseline": (report.baseline_of.get(r.name).name if report.baseline_of.get(r.name) else None)}
                 for r in report.runs],
        "n_notes": int(len(report.notes)),
    }
    files["report.json"] = json.dumps(manifest, indent=2).encode("utf-8")
    return files


def write_report(report, outdir: str | os.PathLike, formats: Iterable[str] = FORMATS) -> Path:
    """Write the report folder atomically (see the module doc). Returns OUTDIR."""
    formats = tuple(formats)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ReportError(f"unknown output format(s) {bad}; use {', '.join(FORMATS)}")
    outdir = Path(outdir)
    _check_replaceable(outdir)
    files = _files(report, formats)  # render everything before touching the disk
    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    try:
        for rel, data in files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        os.chmod(tmp, 0o755)
        if outdir.exists():
            if _exchange(tmp, outdir):
                shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old report
                return outdir
            old = outdir.parent / f".{outdir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(outdir, old)
            try:
                os.rename(tmp, outdir)
            except BaseException:
                os.rename(old, outdir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, outdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return outdir

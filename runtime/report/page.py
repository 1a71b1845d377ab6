"""The report page: one self-contained HTML document (inline CSS, figures as data URIs, no script, no link to
anything outside the file). Every text from a report or a generation is HTML-escaped."""
from __future__ import annotations

import datetime as _dt
import html
import json
from typing import Any, Sequence

from runtime import check, stats
from runtime.errors import UserError
from runtime.mmtoxicqa.compat import mismatches
from runtime.mmtoxicqa.reports import Run
from runtime.report import examples as ex
from runtime.report import figures
from runtime.report.experts import ExpertMap

SECTIONS = (("summary", "Summary"), ("harmful", "Harmful rate"), ("toxicity", "Toxicity distribution"),
            ("experts", "Expert map"), ("quality", "Fluency and visual utility"), ("latency", "Latency"),
            ("examples", "Example generations"), ("provenance", "Provenance"))

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:18px 28px 60px}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:19px;margin:34px 0 8px;border-bottom:2px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}p.sub{color:#555;margin:0 0 12px;font-size:13px}
nav a{margin-right:12px;font-size:13px;color:#0645ad;text-decoration:none}
table{border-collapse:collapse;font-size:13px;margin:6px 0 10px;background:#fff}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f3}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.pass{color:#1a7f37;font-weight:600}.noise{color:#9a6700;font-weight:600}.fail{color:#cf222e;font-weight:700}
.off{color:#777}.banner{padding:10px 14px;border-radius:6px;margin:10px 0;font-size:14px}
.banner.ok{background:#dafbe1;border:1px solid #4ac26b}.banner.bad{background:#ffebe9;border:1px solid #ff8182}
.banner.warn{background:#fff8c5;border:1px solid #d4a72c}
img{max-width:100%;height:auto;display:block;margin:6px 0;background:#fff}
td.text{max-width:330px;white-space:pre-wrap;word-break:break-word;font-size:12px}
td.harm{background:#ffebe9}.tag{font-size:11px;color:#555}
.kv td:first-child{color:#555;white-space:nowrap}code{font-size:12px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(r: dict[str, Any] | None) -> str:
    if not r or not r.get("total"):
        return "n/a"
    rate, low, high = figures.rate_interval(r)
    return f"{100 * rate:.1f}% [{100 * low:.1f}, {100 * high:.1f}] ({r['hits']}/{r['total']})"


def _rtp(entry: dict[str, Any] | None) -> tuple[str, str]:
    """Cells of one `rtp_metrics` entry: expected max toxicity and toxicity probability with their intervals."""
    if not isinstance(entry, dict) or not entry.get("n"):
        return "n/a", "n/a"
    emt, prob = entry["expected_max_toxicity"], entry["toxicity_probability"]
    ci = f" [{emt['low']:.3f}, {emt['high']:.3f}]" if emt.get("low") is not None else ""
    pci = f" [{100 * prob['low']:.1f}, {100 * prob['high']:.1f}]" if prob.get("low") is not None else ""
    return (f"{emt['value']:.3f}{ci} (k={_e(entry['k'])})",
            f"{100 * prob['rate']:.1f}%{pci} ({prob['hits']}/{prob['total']})")


def _num(value: Any, fmt: str = "{:.2f}") -> str:
    return fmt.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """A table whose cells are already-escaped HTML."""
    out = ["<table><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td class=\"num\">{c}</td>" if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{_e(alt)}">'


def _run_name(i: int, run: Run) -> str:
    return f'<span class="swatch" style="background:{figures.colour(i)}"></span>{i + 1}. {_e(run.label)}'


def latency(run: Run) -> dict[str, Any]:
    """Timing of a run: generation (+ judging) seconds per generated item and tokens per second; tokens only
    when no item came from the resume cache (its time was not measured in this run)."""
    r = run.report
    gen, items, cached = r.get("generation_time_s"), r.get("items_generated"), r.get("items_from_cache") or 0
    per_item = gen / items if isinstance(gen, (int, float)) and items else None
    tokens = sum(int(row.get("n_tokens") or 0) for row in run.rows) if run.rows and cached == 0 else None
    tok_s = tokens / gen if tokens and gen else None
    extra = r.get("latency") if isinstance(r.get("latency"), dict) else {}
    return {"generation_time_s": gen, "wall_time_s": r.get("wall_time_s"), "items_generated": items,
            "items_from_cache": cached, "seconds_per_item": per_item, "tokens": tokens, "tokens_per_s": tok_s,
            "extra": extra}


def _verdict_cell(c: check.Check) -> str:
    css = {stats.PASS: "pass", stats.NOISE: "noise", stats.FAIL: "fail"}.get(c.values["verdict"], "off")
    return f'<span class="{css}">{_e(c.verdict)}</span>'


def _summary(runs: Sequence[Run]) -> str:
    rows = []
    for i, run in enumerate(runs):
        r = run.report
        lat = latency(run)
        rows.append([_run_name(i, run), _pct(r["harmful_rate"]), *_rtp((r.get("rtp_metrics") or {}).get("overall")),
                     _num(r.get("mean_toxicity"), "{:.3f}"), _num(r.get("perplexity")), _pct(r["visual_accuracy"]),
                     _pct(r["degenerate_rate"]), _num(lat["seconds_per_item"])])
    out = [_table(["run", "harmful rate [95% CI] (hits/n)", "expected max toxicity [95% CI] (k samples)",
                   "toxicity probability [95% CI] (prompts)", "mean toxicity", "perplexity",
                   "visual accuracy [95% CI]", "degenerate [95% CI]", "s / item"], rows,
                  numeric=(1, 2, 3, 4, 5, 6, 7, 8))]
    base = runs[0]
    for j, other in enumerate(runs[1:], 1):
        out.append(f"<h3>Gate with default limits: {_e(base.label)} (now) against {_e(other.label)} (baseline)</h3>")
        try:
            checks = check.gate(other, base)
        except UserError as e:
            out.append(f'<div class="banner warn">Not comparable: {_e(e)}</div>')
            continue
        failed = [c.metric for c in checks if c.values["verdict"] == stats.FAIL]
        out.append(f'<div class="banner {"bad" if failed else "ok"}">'
                   f'{"FAIL: " + _e(", ".join(failed)) if failed else "PASS: every default limit holds"}</div>')
        out.append(_table(["metric", "baseline", "now", "change [95% CI]", "limit", "verdict"],
                          [[_e(c.metric), _e(c.baseline), _e(c.now), _e(c.change), _e(c.limit), _verdict_cell(c)]
                           for c in checks], numeric=(1, 2, 3)))
    return "".join(out)


def _harmful(runs: Sequence[Run]) -> str:
    return (_img(figures.harmful_bars(runs, "harmful_rate_by_condition", "harmful rate by condition (95% CI)"),
                 "harmful rate by condition")
            + _img(figures.harmful_bars(runs, "harmful_rate_by_category",
                                        "harmful rate by category, toxic-eliciting conditions (95% CI)"),
                   "harmful rate by category"))


def _rtp_table(runs: Sequence[Run], threshold: float) -> str:
    """RealToxicityPrompts' metrics per run and condition (toxic-eliciting overall first)."""
    rows = []
    for i, run in enumerate(runs):
        block = run.report.get("rtp_metrics") or {}
        entries = [("toxic-eliciting", block.get("overall"))] + list((block.get("by_condition") or {}).items())
        rows += [[_run_name(i, run), _e(name), *_rtp(entry)] for name, entry in entries if entry]
    if not rows:
        return ""
    return ("<h3>Expected maximum toxicity and toxicity probability over k samples per prompt</h3>"
            f"<p class=\"sub\">As AurA and DExperts report them on RealToxicityPrompts (k = 25 there): the mean over "
            f"prompts of the highest toxicity among a prompt's k samples, and the share of prompts with at least "
            f"one sample scored &gt;= {threshold:g}. Intervals: 95%, prompts as the units.</p>"
            + _table(["run", "condition", "expected max toxicity [95% CI]", "toxicity probability [95% CI]"], rows,
                     numeric=(2, 3)))


def _toxicity(runs: Sequence[Run], threshold: float) -> str:
    uri = figures.toxicity_histogram(runs, threshold)
    rows = [[_run_name(i, r), _num(r.report.get("mean_toxicity"), "{:.3f}"),
             _e(", ".join(f"{c} {v:.3f}" for c, v in (r.report.get("mean_toxicity_by_condition") or {}).items()
                          if isinstance(v, (int, float))))] for i, r in enumerate(runs)]
    table = _table(["run", "mean toxicity", "mean by condition"], rows, numeric=(1,)) + _rtp_table(runs, threshold)
    if uri is None:
        return table + "<p class=\"sub\">No generations.jsonl beside any report: no per-response distribution.</p>"
    return _img(uri, "toxicity distribution") + table


def _experts(m: ExpertMap | None) -> str:
    if m is None:
        return "<p class=\"sub\">No experts artifact given (pass --experts DIR to show which units were suppressed).</p>"
    hit = m.alpha < 1
    kv = [["artifact", _e(m.path)], ["model", _e(m.model.get("name", "?"))],
          ["method", _e(json.dumps(m.method, sort_keys=True))],
          ["units suppressed", f"{int(hit.sum()):,} of {m.alpha.size:,} ({100 * hit.mean():.2f}%)"],
          ["units silenced (alpha = 0)", f"{int((m.alpha == 0).sum()):,}"],
          ["mean alpha of suppressed", _num(float(m.alpha[hit].mean()) if hit.any() else None, "{:.3f}")],
          ["AUROC range", f"{m.auroc.min():.3f} to {m.auroc.max():.3f}"]]
    per_module = [[_e(mod), f"{int(m.suppressed[:, j].sum()):,}", f"{int(m.units[:, j].sum()):,}"]
                  for j, mod in enumerate(m.modules)]
    return ("<table class=\"kv\">" + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in kv) + "</table>"
            + _table(["module", "suppressed", "units"], per_module, numeric=(1, 2))
            + _img(figures.expert_heatmap(m), "suppressed units per layer and module")
            + _img(figures.auroc_histogram(m), "AUROC histogram"))


def _quality(runs: Sequence[Run]) -> str:
    rows = []
    for i, run in enumerate(runs):
        r = run.report
        corpus = r.get("perplexity_corpus") or {}
        rows.append([_run_name(i, run), _num(r.get("perplexity")), _e(corpus.get("path", r.get("perplexity_note", ""))),
                     _num(r.get("response_perplexity")), _pct(r["visual_accuracy"]), _pct(r["degenerate_rate"]),
                     _e(", ".join(f"{k} {100 * v['rate']:.0f}%" for k, v in (r.get("visual_accuracy_by_kind") or {}).items()
                                  if isinstance(v, dict) and v.get("rate") is not None))])
    return (_img(figures.quality_bars(runs), "perplexity, visual accuracy and degenerate rate")
            + _table(["run", "perplexity", "corpus", "response perplexity", "visual accuracy", "degenerate",
                      "visual accuracy by kind"], rows, numeric=(1, 3, 4, 5)))


def _latency(runs: Sequence[Run]) -> str:
    lats = [latency(r) for r in runs]
    rows = [[_run_name(i, r), _num(t["generation_time_s"], "{:.1f}"), _num(t["wall_time_s"], "{:.1f}"),
             f"{t['items_generated'] or 0} ({t['items_from_cache']} from cache)", _num(t["seconds_per_item"]),
             _num(t["tokens"], "{:d}"), _num(t["tokens_per_s"], "{:.1f}"),
             _e(", ".join(f"{k}: {v}" for k, v in t["extra"].items()))] for i, (r, t) in enumerate(zip(runs, lats))]
    return (_img(figures.latency_bars([r.label for r in runs], [t["seconds_per_item"] for t in lats],
                                      [t["tokens_per_s"] for t in lats]), "latency")
            + _table(["run", "generation + judging s", "wall s", "items generated", "s / item", "tokens", "tokens / s",
                      "backend timings"], rows, numeric=(1, 2, 4, 5, 6))
            + "<p class=\"sub\">Measured on the machine that ran each benchmark, batched, judge included: compare "
              "runs from the same machine only.</p>")


def _examples(runs: Sequence[Run], masker_note: str, items: list[ex.Example]) -> str:
    if not items:
        return "<p class=\"sub\">No generations.jsonl beside the reports: no examples to show.</p>"
    head = ["item", "prompt (masked)"] + [f"{i + 1}. {r.label}" for i, r in enumerate(runs)]
    out = [f"<p class=\"sub\">{_e(masker_note)}</p><table><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr>"]
    for item in items:
        out.append(f"<tr><td><code>{_e(item.id)}</code><br><span class=\"tag\">{_e(item.condition)} / "
                   f"{_e(item.category)}</span></td><td class=\"text\">{_e(item.prompt)}</td>")
        for cell in item.cells:
            if cell is None:
                out.append("<td class=\"tag\">no generations</td>")
                continue
            tags = [f"toxicity {cell.toxicity:.2f}"] + (["harmful"] if cell.harmful else []) + \
                   (["degenerate"] if cell.degenerate else []) + ([f"{cell.masked_words} masked"] if cell.masked_words else [])
            out.append(f"<td class=\"text{' harm' if cell.harmful else ''}\">{_e(cell.text)}<br>"
                       f"<span class=\"tag\">{_e(', '.join(tags))}</span></td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _provenance(runs: Sequence[Run]) -> str:
    out = []
    for i, run in enumerate(runs):
        r = run.report
        settings = {k: v for k, v in (r.get("settings") or {}).items() if k not in ("generation",)}
        kv = [("report", run.path), ("model", json.dumps(r.get("model"), sort_keys=True)),
              ("judge", json.dumps(r.get("judge"), sort_keys=True)),
              ("dataset", json.dumps(r.get("dataset"), sort_keys=True)),
              ("settings", json.dumps(settings, sort_keys=True)),
              ("items by condition", json.dumps(r.get("n_items_by_condition"), sort_keys=True))]
        out.append(f"<h3>{_run_name(i, run)}</h3><table class=\"kv\">"
                   + "".join(f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>" for k, v in kv) + "</table>")
    return "".join(out)


def render(runs: Sequence[Run], experts: ExpertMap | None, examples: list[ex.Example], masker_note: str) -> str:
    """The whole page. `runs[0]` is the run under test; the others are compared with it."""
    threshold = float(runs[0].report.get("threshold") or 0.5)
    problems = [(r.label, mismatches(runs[0].report, r.report)) for r in runs[1:]]
    warn = "".join(f'<div class="banner warn">{_e(label)} measured something else than {_e(runs[0].label)}: '
                   f'{_e("; ".join(p))}. Its numbers are shown but are not comparable.</div>'
                   for label, p in problems if p)
    bodies = {"summary": _summary(runs), "harmful": _harmful(runs), "toxicity": _toxicity(runs, threshold),
              "experts": _experts(experts), "quality": _quality(runs), "latency": _latency(runs),
              "examples": _examples(runs, masker_note, examples), "provenance": _provenance(runs)}
    legend = "".join(f"<div>{_run_name(i, r)}</div>" for i, r in enumerate(runs))
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{key}">{_e(title)}</a>' for key, title in SECTIONS)
    sections = "".join(f'<section id="{key}"><h2>{_e(title)}</h2>{bodies[key]}</section>' for key, title in SECTIONS)
    n = runs[0].report
    k = n["harmful_rate"]["k"]
    sub = (f"{n['harmful_rate']['n']} toxic-eliciting items, {k} sample{'s' if k != 1 else ''} each; judge "
           f"{(n.get('judge') or {}).get('name', '?')} (harmful when P(toxic) >= {threshold:g}); written {when}")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>MM-TOXIC-QA report: {_e(runs[0].label)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>MM-TOXIC-QA report: {_e(runs[0].label)}</h1><p class=\"sub\">{_e(sub)}</p>"
            f"<nav>{nav}</nav>{legend}{warn}{sections}</main></body></html>\n")

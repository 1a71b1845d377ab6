"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no global state)
and returned as `data:image/png;base64,...` URIs so the page needs no other file."""
from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import numpy as np

from runtime import stats
from runtime.errors import UserError
from runtime.mmtoxicqa.items import TOXIC_CONDITIONS
from runtime.mmtoxicqa.reports import Run
from runtime.report.experts import ExpertMap

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
LINESTYLES = ("-", "--", ":", "-.")  # identical distributions (a bundle and its source model) stay visible
DPI = 100


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise UserError(f"the HTML report draws its plots with matplotlib, which is not installed: "
                        f"pip install 'matplotlib>=3.8' ({e})") from e
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def to_data_uri(fig: Any) -> str:
    """The figure as a base64 PNG data URI."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def colour(i: int) -> str:
    """The colour of the i-th run, the same in every figure."""
    return COLOURS[i % len(COLOURS)]


def rate_interval(rate: dict[str, Any], confidence: float = stats.DEFAULT_CONFIDENCE) -> tuple[float, float, float]:
    """(rate, low, high) of a report rate field, with the effective counts of k > 1 samples per item."""
    if rate.get("k", 1) > 1 and rate.get("n"):
        hits, n = stats.effective_counts(rate["hits"] / rate["total"], rate["n"])
    else:
        hits, n = rate["hits"], rate["total"]
    low, high = stats.wilson_interval(hits, n, confidence)
    return hits / n, low, high


def _grouped_bars(ax: Any, groups: Sequence[str], runs: Sequence[Run], values: list[list[tuple[float, float, float] | None]],
                  percent: bool = True) -> None:
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(groups))
    scale = 100.0 if percent else 1.0
    for i, run in enumerate(runs):
        vals = values[i]
        ys = np.array([v[0] * scale if v else np.nan for v in vals])
        err = np.array([[(v[0] - v[1]) * scale, (v[2] - v[0]) * scale] if v else [0, 0] for v in vals]).T
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, ys, width * 0.92, color=colour(i), label=run.label, yerr=err, capsize=3,
               error_kw={"elinewidth": 1, "ecolor": "#333"})
        for p, y in zip(pos, ys):
            if np.isfinite(y):
                ax.annotate(f"{y:.1f}" if percent else f"{y:.3g}", (p, y), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=20 if max((len(g) for g in groups), default=0) > 10 else 0, ha="right"
                       if max((len(g) for g in groups), default=0) > 10 else "center")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def harmful_bars(runs: Sequence[Run], key: str, title: str) -> str:
    """Grouped bars of the harmful rate per group (`harmful_rate_by_condition` or `..._by_category`), one colour
    per run, with 95% Wilson intervals."""
    groups = sorted({g for r in runs for g, v in (r.report.get(key) or {}).items() if v.get("total")})
    if key.endswith("by_condition"):
        order = {c: i for i, c in enumerate((*TOXIC_CONDITIONS, "benign", "visual"))}
        groups.sort(key=lambda g: (order.get(g, len(order)), g))
    values = [[rate_interval(r.report[key][g]) if (r.report.get(key) or {}).get(g, {}).get("total") else None
               for g in groups] for r in runs]
    fig = _figure(min(11.5, max(7.5, 3.5 + 0.45 * len(groups) * max(1, len(runs)))), 3.6)
    ax = fig.add_subplot()
    _grouped_bars(ax, groups, runs, values)
    ax.set_ylabel("harmful responses (%)")
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return to_data_uri(fig)


def toxicity_histogram(runs: Sequence[Run], threshold: float) -> str | None:
    """Step histograms of per-response toxicity on the toxic-eliciting conditions, one per run with generation
    rows (None when no run has them), log counts, the harmful threshold marked."""
    with_rows = [(i, r) for i, r in enumerate(runs) if r.rows]
    if not with_rows:
        return None
    fig = _figure(8.0, 3.4)
    ax = fig.add_subplot()
    bins = np.linspace(0.0, 1.0, 41)
    for i, run in with_rows:
        tox = np.array([row["toxicity"] for row in run.rows or [] if row["condition"] in TOXIC_CONDITIONS])
        if tox.size:
            ax.hist(tox, bins=bins, histtype="step", linewidth=1.8, color=colour(i), linestyle=LINESTYLES[i % 4],
                    label=f"{run.label} (n={tox.size}, mean {tox.mean():.3f})")
    ax.axvline(threshold, color="#c00", linestyle="--", linewidth=1)
    ax.annotate(f"harmful >= {threshold:g}", (threshold, 1), xycoords=("data", "axes fraction"), xytext=(4, -12),
                textcoords="offset points", color="#c00", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_xlabel("judge P(toxic) per response")
    ax.set_ylabel("responses")
    ax.legend(fontsize=8, loc="upper center")
    ax.grid(alpha=0.3)
    return to_data_uri(fig)


def expert_heatmap(m: ExpertMap) -> str:
    """Suppressed units (alpha < 1) per MLP module (rows) and decoder layer (columns), counts in the cells."""
    grid = m.suppressed.T
    fig = _figure(min(11.5, 2.6 + 0.3 * len(m.layers)), 1.5 + 0.4 * len(m.modules))
    ax = fig.add_subplot()
    top = max(1, int(grid.max()))
    image = ax.imshow(grid, aspect="auto", cmap="Reds", vmin=0, vmax=top)
    ax.set_yticks(range(len(m.modules)))
    ax.set_yticklabels(m.modules, fontsize=8)
    ax.set_xticks(range(len(m.layers)))
    ax.set_xticklabels([str(layer) for layer in m.layers], fontsize=7)
    ax.set_xlabel("decoder layer")
    if len(m.layers) <= 40:
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=6.5 if v < 1000 else 5,
                    color="white" if v > 0.6 * top else "black")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.01, label="suppressed")
    ax.set_title("units suppressed (alpha < 1) per layer and module", fontsize=10)
    return to_data_uri(fig)


def auroc_histogram(m: ExpertMap) -> str:
    """AUROC of every unit (log counts), suppressed units stacked in red."""
    fig = _figure(7.0, 3.2)
    ax = fig.add_subplot()
    low, high = float(min(m.auroc.min(), 0.3)), float(max(m.auroc.max(), 0.7))
    bins = np.linspace(low, high, 61)
    hit = m.alpha < 1
    ax.hist([m.auroc[~hit], m.auroc[hit]], bins=bins, stacked=True, color=["#9aa", "#d62728"],
            label=[f"kept (alpha = 1): {int((~hit).sum()):,}", f"suppressed (alpha < 1): {int(hit.sum()):,}"])
    ax.axvline(0.5, color="#333", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("unit AUROC (toxic vs non-toxic)")
    ax.set_ylabel("units")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return to_data_uri(fig)


def quality_bars(runs: Sequence[Run]) -> str:
    """Three panels: perplexity, visual accuracy and degenerate rate per run (rates with 95% Wilson intervals)."""
    fig = _figure(10.0, 3.2)
    panels = (("perplexity", "perplexity (lower is better)"), ("visual_accuracy", "visual accuracy % (higher is better)"),
              ("degenerate_rate", "degenerate outputs % (lower is better)"))
    for p, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, 3, p + 1)
        for i, run in enumerate(runs):
            value = run.report.get(key)
            if key == "perplexity":
                if value is None:
                    ax.annotate("n/a", (i, 0), ha="center", va="bottom", fontsize=8)
                    continue
                ax.bar(i, value, 0.7, color=colour(i))
                ax.annotate(f"{value:.1f}", (i, value), xytext=(0, 2), textcoords="offset points", ha="center",
                            fontsize=8)
            elif value and value.get("total"):
                r, lo, hi = rate_interval(value)
                ax.bar(i, 100 * r, 0.7, color=colour(i), yerr=[[100 * (r - lo)], [100 * (hi - r)]], capsize=3)
                ax.annotate(f"{100 * r:.1f}", (i, 100 * r), xytext=(4, 2), textcoords="offset points", fontsize=8)
            else:
                ax.annotate("n/a", (i, 0), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels([str(i + 1) for i in range(len(runs))])
        ax.set_xlabel("run")
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    return to_data_uri(fig)


def latency_bars(labels: Sequence[str], seconds_per_item: Sequence[float | None],
                 tokens_per_s: Sequence[float | None]) -> str:
    """Two panels: generation seconds per item and generated tokens per second, per run."""
    fig = _figure(8.0, 2.8)
    for p, (values, title, fmt) in enumerate(((seconds_per_item, "generation seconds per item", "{:.2f}"),
                                              (tokens_per_s, "generated tokens per second", "{:.1f}"))):
        ax = fig.add_subplot(1, 2, p + 1)
        for i, v in enumerate(values):
            if v is None:
                ax.annotate("n/a", (i, 0), ha="center", va="bottom", fontsize=8)
                continue
            ax.bar(i, v, 0.7, color=colour(i))
            ax.annotate(fmt.format(v), (i, v), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([str(i + 1) for i in range(len(labels))])
        ax.set_xlabel("run")
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    return to_data_uri(fig)

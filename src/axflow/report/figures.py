"""The report's plots, as matplotlib `Figure`s rendered by Agg (no pyplot state): ROC curves,
factor curves, the concept-vs-fluency trade-off, the winrate matrix and the judge's validity.

Each function returns a `Figure`; `png_bytes` and `inline_svg` serialise one without a date or
software stamp, so equal data gives equal files. Figures are built from the report's tables only.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.metrics import roc_curve

from axflow.metrics.uncertainty import Interval

SCORE_LABELS = {
    "concept_score": "concept",
    "instruction_score": "instruction",
    "fluency_score": "fluency",
    "overall": "overall",
}
LEVEL_COLOURS = ("#d62728", "#ff7f0e", "#2ca02c")  # judge score 0, 1, 2


@dataclass(frozen=True)
class RocCurve:
    """One concept's ROC curve (max-pooled scores, positives against negatives)."""

    concept_id: int
    fpr: np.ndarray
    tpr: np.ndarray
    auroc: float | None


def roc_curves(scores: pl.DataFrame, aurocs: Mapping[int, float | None]) -> list[RocCurve]:
    """Per concept in `scores` (detect scores: concept_id, category, label, max_act), its ROC
    curve over positives and negatives; hard negatives are left out, as the AUROC leaves them."""
    rows = scores.filter(pl.col("category") != "hard negative")
    curves = []
    for cid in rows["concept_id"].unique().sort().to_list():
        one = rows.filter(pl.col("concept_id") == cid)
        labels = one["label"].to_numpy()
        if len(np.unique(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, one["max_act"].to_numpy().astype(np.float64))
        curves.append(RocCurve(cid, fpr, tpr, aurocs.get(cid)))
    return curves


def roc_id(method: str, concept_id: int) -> str:
    """The SVG element id of one method's curve for one concept (the page's concept picker
    shows and hides curves by this id)."""
    return f"roc-{method}-c{concept_id}"


def roc_figure(method: str, curves: Sequence[RocCurve], names: Mapping[int, str]) -> Figure:
    """All concepts' ROC curves of one method overlaid; each curve carries `roc_id`."""
    fig = Figure(figsize=(4.2, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--")
    alpha = 0.9 if len(curves) <= 10 else max(0.15, 3.0 / len(curves))
    for c in curves:
        auc = "–" if c.auroc is None else f"{c.auroc:.3f}"
        (line,) = ax.plot(
            c.fpr,
            c.tpr,
            lw=1.4,
            alpha=alpha,
            label=f"{c.concept_id}: {auc}",
        )
        line.set_gid(roc_id(method, c.concept_id))
    if 0 < len(curves) <= 10:
        ax.legend(title="concept: AUROC", fontsize=7, title_fontsize=7, loc="lower right")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title(f"{method}: ROC per concept", fontsize=10)
    return fig


def factor_means(ratings: pl.DataFrame) -> pl.DataFrame:
    """Mean over concepts of each concept's mean score, per split and factor."""
    scores = list(SCORE_LABELS)
    per_concept = ratings.group_by("split", "factor", "concept_id").agg(
        [pl.col(s).mean() for s in scores]
    )
    return (
        per_concept.group_by("split", "factor")
        .agg([pl.col(s).mean() for s in scores] + [pl.len().alias("concepts")])
        .sort("split", "factor")
    )


def factor_figure(method: str, means: pl.DataFrame, chosen: Sequence[float]) -> Figure:
    """Concept, instruction, fluency and overall score against the factor (selection half solid,
    held-out half dashed); ticks mark each concept's chosen factor, the line their median."""
    fig = Figure(figsize=(5.8, 3.4), layout="constrained")
    ax = fig.subplots()
    colours = dict(zip(SCORE_LABELS, ("#1f77b4", "#ff7f0e", "#2ca02c", "#222222"), strict=True))
    for split, style in (("select", "-"), ("test", "--")):
        part = means.filter(pl.col("split") == split)
        if part.is_empty():
            continue
        for score, label in SCORE_LABELS.items():
            ax.plot(
                part["factor"],
                part[score],
                style,
                marker="o",
                ms=3,
                color=colours[score],
                lw=2.0 if score == "overall" else 1.3,
                label=label if split == "select" else None,
            )
    if chosen:
        ax.axvline(float(np.median(chosen)), color="#9467bd", lw=1.2, ls=":")
        ax.plot(chosen, np.full(len(chosen), -0.05), "|", color="#9467bd", ms=9)
    ax.set(xlabel="steering factor", ylabel="judge score (0–2)", ylim=(-0.1, 2.1))
    ax.set_title(method, fontsize=10)
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], color="#555555", ls="-", label="selection half"),
        Line2D([], [], color="#555555", ls="--", label="held-out half"),
        Line2D([], [], color="#9467bd", ls=":", marker="|", label="chosen factors"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


@dataclass(frozen=True)
class TradeoffPoint:
    """One method at its chosen factors: mean sub-scores over concepts with their intervals."""

    method: str
    concept: Interval
    instruction: Interval
    fluency: Interval


def tradeoff_figure(points: Sequence[TradeoffPoint]) -> Figure:
    """Concept score against instruction score and against fluency score, one point per method
    with its 95% interval on both axes."""
    fig = Figure(figsize=(9.4, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, attr, label in zip(
        axes, ("instruction", "fluency"), ("instruction score", "fluency score"), strict=True
    ):
        for k, p in enumerate(points):
            x, y = getattr(p, attr), p.concept
            colour = f"C{k % 10}"
            ax.errorbar(
                x.value,
                y.value,
                xerr=[[x.value - x.lo], [x.hi - x.value]],
                yerr=[[y.value - y.lo], [y.hi - y.value]],
                fmt="o",
                color=colour,
                capsize=3,
                alpha=0.85,
                label=p.method if attr == "instruction" else None,
            )
        ax.set(xlim=(-0.05, 2.05), ylim=(-0.05, 2.05), xlabel=label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("concept score")
    fig.legend(loc="outside right upper", fontsize=8)
    fig.suptitle(
        "Trade-off at the chosen factor (held-out half, 95% bootstrap intervals)", fontsize=9
    )
    return fig


def winrate_figure(methods: Sequence[str], matrix: np.ndarray) -> Figure:
    """Heat map: row method's winrate against column method (per concept, ties 0.5)."""
    n = len(methods)
    size = 1.2 + 0.55 * n
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="RdBu")
    for i in range(n):
        for j in range(n):
            if not np.isnan(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(n), methods, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), methods, fontsize=8)
    ax.set(xlabel="against", ylabel="method")
    fig.colorbar(image, ax=ax, shrink=0.8, label="winrate")
    return fig


def validity_figure(groups: Sequence[tuple[str, Sequence[float]]]) -> Figure:
    """Share of judge scores 0 / 1 / 2 in each ground-truth group (one horizontal bar each)."""
    fig = Figure(figsize=(6.4, 0.9 + 0.32 * len(groups)), layout="constrained")
    ax = fig.subplots()
    labels = [name for name, _ in groups]
    left = np.zeros(len(groups))
    shares = np.array([list(s) for _, s in groups], dtype=np.float64).reshape(len(groups), 3)
    for level in range(3):
        ax.barh(labels, shares[:, level], left=left, color=LEVEL_COLOURS[level], label=str(level))
        left += shares[:, level]
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="share of items")
    ax.tick_params(axis="y", labelsize=7)
    fig.legend(title="score", fontsize=7, title_fontsize=7, loc="outside right upper")
    return fig


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG, without a software stamp."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def inline_svg(fig: Figure, salt: str) -> str:
    """The figure as an `<svg>` element for inlining in HTML: no XML prologue, no date, text as
    text, and clip-path ids salted with `salt` so several inlined figures never share an id."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]

"""report.html: one self-contained page per experiment (figures inlined, no network), and the
same figures as PNG files under `figures/` for papers.

The page is a Jinja2 template (`templates/report.html.j2`) filled from the tables the Markdown
report is built from plus the runs' artefacts (detection scores, ratings, generations, data
stats, benchmark files). Sections: leaderboard, ROC curves, factor curves, trade-off, winrate
matrix, per-concept drill-down, data, judge, provenance.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from axflow import store
from axflow.layout import method_inputs
from axflow.metrics.steering import winrate_points
from axflow.metrics.uncertainty import Interval, bootstrap_mean
from axflow.report import figures as F
from axflow.report.leaderboard import MethodResult

TEMPLATES = Path(__file__).resolve().parent / "templates"
SECTIONS = (
    ("leaderboard", "Leaderboard"),
    ("roc", "ROC curves"),
    ("factors", "Factor curves"),
    ("tradeoff", "Trade-off"),
    ("winrate", "Winrate matrix"),
    ("concepts", "Per concept"),
    ("data", "Data"),
    ("judge", "Judge"),
    ("provenance", "Provenance"),
)
# Leaderboard columns: (leaderboard.csv column, header, kind); `ci` cells show [lo, hi] too.
COLUMNS = (
    ("method", "method", "text"),
    ("kind", "kind", "text"),
    ("scope", "scope", "text"),
    ("n_concepts", "concepts", "int"),
    ("coverage", "coverage", "num"),
    ("detection_auroc", "detection AUROC", "ci"),
    ("detection_delta", "Δ AUROC{vs}", "ci"),
    ("hard_negative_acc", "hard-neg acc", "num"),
    ("imbalanced_f1", "imbalanced F1", "num"),
    ("steering_score", "steering", "ci"),
    ("steering_delta", "Δ steering{vs}", "ci"),
    ("winrate", "winrate{vs}", "ci"),
    ("concept_score", "concept", "num"),
    ("instruction_score", "instruction", "num"),
    ("fluency_score", "fluency", "num"),
    ("mean_factor", "mean factor", "num"),
    ("generations", "generations", "int"),
    ("judge_failures", "judge failures", "int"),
    ("unrated", "unrated", "int"),
    ("unmatched", "unmatched", "int"),
)


def fmt(value: Any) -> str:
    """A leaderboard number as leaderboard.csv writes it (4 decimals), `–` when missing."""
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def leaderboard_table(board: pl.DataFrame, baseline: str | None) -> dict[str, Any]:
    """Header and cells of the sortable leaderboard; every cell keeps its CSV value."""
    vs = f" vs {baseline}" if baseline else ""
    columns = [(c, label.format(vs=vs), kind) for c, label, kind in COLUMNS if c in board.columns]
    # A column added to the leaderboard later still shows (every CSV number is on the page).
    shown = {c for c, _, _ in columns}
    shown |= {f"{c}_{end}" for c, _, kind in columns if kind == "ci" for end in ("lo", "hi")}
    for c, dtype in board.schema.items():
        if c not in shown:
            columns.append((c, c, "num" if dtype.is_numeric() else "text"))
    rows = []
    for r in board.iter_rows(named=True):
        cells = []
        for column, _, kind in columns:
            value = r[column]
            text = fmt(value)
            if kind == "ci" and value is not None and r.get(f"{column}_lo") is not None:
                text += f" [{fmt(r[f'{column}_lo'])}, {fmt(r[f'{column}_hi'])}]"
            cells.append({"column": column, "kind": kind, "text": text, "value": value})
        rows.append(cells)
    return {"columns": columns, "rows": rows}


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


class FigureSet:
    """The run's figures: PNG bytes by file name, written together under `figures/`."""

    def __init__(self) -> None:
        self.pngs: dict[str, bytes] = {}

    def add(self, name: str, fig: Any) -> str:
        """Keep `fig` as `<name>.png` and return it as a data URI for the page."""
        self.pngs[f"{name}.png"] = F.png_bytes(fig)
        return data_uri(self.pngs[f"{name}.png"])

    def write(self, folder: str) -> None:
        with store.atomic_dir(folder) as tmp:
            for name, png in self.pngs.items():
                (tmp / name).write_bytes(png)


def read_method_tables(methods: list[dict], inputs: dict[str, str]) -> dict[str, dict]:
    """Per method: its detection scores and its ratings joined with their generations."""
    out: dict[str, dict] = {}
    for m in methods:
        paths = method_inputs(inputs, m["name"])
        tables: dict[str, pl.DataFrame | None] = {"scores": None, "rated": None}
        if paths["scores"]:
            columns = ["concept_id", "category", "label", "max_act"]
            tables["scores"] = pl.concat(
                [
                    pl.from_arrow(store.read_table(p, "detect_scores", columns))
                    for p in paths["scores"]
                ]
            )
        if paths["ratings"]:
            rated = pl.concat(
                [pl.from_arrow(store.read_table(p, "ratings")) for p in paths["ratings"]]
            )
            gens = paths.get("generations") or []
            if gens:
                text = pl.concat(
                    [
                        pl.from_arrow(
                            store.read_table(
                                p,
                                "generations",
                                [
                                    "concept_id",
                                    "input_id",
                                    "split",
                                    "factor",
                                    "instruction",
                                    "generation",
                                ],
                            )
                        )
                        for p in gens
                    ]
                )
                rated = rated.join(
                    text,
                    on=["concept_id", "input_id", "split", "factor"],
                    how="left",
                    nulls_equal=True,
                )
            tables["rated"] = rated
        out[m["name"]] = tables
    return out


def roc_section(
    methods: list[dict],
    results: dict[str, MethodResult],
    tables: dict,
    names: dict[int, str],
    figs: FigureSet,
) -> list[dict[str, Any]]:
    """Per detecting method: its ROC curves as inline SVG (concepts selectable on the page)."""
    out = []
    for m in methods:
        scores = tables[m["name"]]["scores"]
        if scores is None or scores.is_empty():
            continue
        det = results[m["name"]].detection
        aurocs = dict(zip(det["concept_id"].to_list(), det["roc_auc"].to_list(), strict=True))
        curves = F.roc_curves(scores, aurocs)
        fig = F.roc_figure(m["name"], curves, names)
        figs.add(f"roc_{m['name']}", fig)
        out.append(
            {
                "method": m["name"],
                "svg": F.inline_svg(fig, salt=f"roc-{m['name']}"),
                "concepts": [c.concept_id for c in curves],
            }
        )
    return out


def factor_section(
    methods: list[dict], results: dict[str, MethodResult], tables: dict, figs: FigureSet
) -> list[dict[str, Any]]:
    """Per steering method whose output depends on the factor: scores against the factor."""
    out = []
    for m in methods:
        rated = tables[m["name"]]["rated"]
        if rated is None or m["factor_free"] or rated["factor"].null_count() == rated.height:
            continue
        steer = results[m["name"]].steering
        chosen = steer.filter(~pl.col("imputed"))["factor"].drop_nulls().to_list()
        fig = F.factor_figure(m["name"], F.factor_means(rated), chosen)
        out.append(
            {
                "method": m["name"],
                "img": figs.add(f"factor_{m['name']}", fig),
                "median": float(np.median(chosen)) if chosen else None,
            }
        )
    return out


def tradeoff_section(
    results: dict[str, MethodResult], seed: int, figs: FigureSet
) -> dict[str, Any]:
    """One point per steering method: mean sub-scores at the chosen factors with intervals."""
    points = []
    for name, r in results.items():
        if r.steering is None:
            continue
        s = r.steering
        iv = {
            c: bootstrap_mean(s[f"{c}_score"].to_numpy(), seed=seed)
            for c in ("concept", "instruction", "fluency")
        }
        points.append(F.TradeoffPoint(name, iv["concept"], iv["instruction"], iv["fluency"]))
    if not points:
        return {}
    rows = [
        {
            "method": p.method,
            **{a: _interval(getattr(p, a)) for a in ("concept", "instruction", "fluency")},
        }
        for p in points
    ]
    return {"img": figs.add("tradeoff", F.tradeoff_figure(points)), "rows": rows}


def _interval(iv: Interval) -> str:
    return "–" if iv.value is None else f"{iv.value:.3f} [{iv.lo:.3f}, {iv.hi:.3f}]"


def winrate_section(results: dict[str, MethodResult], figs: FigureSet) -> dict[str, Any]:
    """Row method's winrate against column method over the concepts both cover."""
    steering = [n for n, r in results.items() if r.steering is not None]
    if len(steering) < 2:
        return {"methods": steering}
    matrix = np.full((len(steering), len(steering)), np.nan)
    for i, a in enumerate(steering):
        for j, b in enumerate(steering):
            shared = [c for c in results[a].scope if c in set(results[b].scope)]
            if shared and i != j:
                va = results[a].values("steering", "steering_score", shared)
                vb = results[b].values("steering", "steering_score", shared)
                matrix[i, j] = winrate_points(va, vb).mean()
    rows = [
        {"method": a, "cells": ["–" if np.isnan(v) else f"{v:.2f}" for v in matrix[i]]}
        for i, a in enumerate(steering)
    ]
    return {
        "methods": steering,
        "rows": rows,
        "img": figs.add("winrate", F.winrate_figure(steering, matrix)),
    }


def write_html(
    methods: list[dict],
    board: pl.DataFrame,
    results: dict[str, MethodResult],
    concepts: pl.DataFrame,
    cfg: dict,
    inputs: dict[str, str],
    outputs: dict[str, str],
    scope: dict[str, Any] | None = None,
) -> None:
    """report.html and figures/*.png of one experiment (outputs `html`, `figures`)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    from axflow.report.drilldown import concept_sections
    from axflow.report.provenance import data_context, judge_context, provenance_context

    baseline = cfg["report"]["winrate_baseline"]
    baseline = baseline if baseline in results else None
    names = (
        dict(zip(concepts["concept_id"].to_list(), concepts["concept"].to_list(), strict=True))
        if "concept" in concepts.columns
        else {}
    )
    tables = read_method_tables(methods, inputs)
    figs = FigureSet()
    context = {
        "cfg": cfg,
        "sections": SECTIONS,
        "scope": scope or {},
        "n_concepts": concepts.height,
        "baseline": baseline,
        "leaderboard": leaderboard_table(board, baseline),
        "roc": roc_section(methods, results, tables, names, figs),
        "concept_names": names,
        "factors": factor_section(methods, results, tables, figs),
        "tradeoff": tradeoff_section(results, cfg["seed"], figs),
        "winrate": winrate_section(results, figs),
        "concepts": concept_sections(concepts, results, tables, names),
        "data": data_context(inputs),
        "judge": judge_context(cfg, inputs, board, figs),
        "provenance": provenance_context(cfg, inputs),
    }
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    page = env.get_template("report.html.j2").render(**context)
    figs.write(outputs["figures"])
    with store.atomic_path(outputs["html"], ".html") as tmp:
        tmp.write_text(page)

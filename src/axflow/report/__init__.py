"""Leaderboard and Markdown report of one experiment, computed only from pipeline artefacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from axflow import store
from axflow.layout import run_inputs
from axflow.report.leaderboard import MethodResult, build_leaderboard


def _md_table(df: pl.DataFrame) -> str:
    def fmt(v):
        if v is None:
            return "–"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.iter_rows()]
    return "\n".join([head, sep, *body])


def generator_totals(stats: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per writer role, its calls, tokens, cost and failed attempts by kind (each retried),
    summed over every shard's data job."""
    totals: dict[str, dict[str, Any]] = {}
    for s in stats:
        for role, g in s.get("generators", {}).items():
            t = totals.setdefault(role, {k: 0 for k in GENERATOR_TOTALS} | {"model": g["model"]})
            for k in GENERATOR_TOTALS:
                t[k] += g[k]
            faults = t.setdefault("faults", {})
            for kind, n in g.get("faults", {}).items():
                faults[kind] = faults.get(kind, 0) + n
    return totals


def data_section(inputs: dict[str, str]) -> list[str]:
    """Examples per concept and category, and what synthesis cost (all shards' data jobs)."""
    stats = [store.read_json(p) for _, p in run_inputs(inputs, "data_stats")]
    if not stats:
        return []
    counts = pl.DataFrame([c for s in stats for c in s["counts"]]).sort("concept_id")
    lines = ["", "## Data", "", "Examples per concept (train negatives: the genre's shared pool):"]
    lines += ["", _md_table(counts), ""]
    for role, t in generator_totals(stats).items():
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(t["faults"].items()))
        lines.append(
            f"- {role} generator `{t['model']}`: {t['requests']} requests, {t['cached']} from the "
            f"call cache, {t['calls']} generated ({t['prompt_tokens']} prompt + "
            f"{t['completion_tokens']} completion tokens, {t['retries']} retries"
            f"{f' after {kinds}' if kinds else ''}, "
            f"${t['cost_usd']:.4f}, {t['seconds']:.0f} s) when the data job last ran"
        )
    lines += verification_lines(stats)
    polysemy = [p for s in stats for p in s.get("polysemy", {}).values()]
    if polysemy:
        lines.append(
            "- hard negatives (polysemy): "
            f"{sum(len(p['words']) for p in polysemy)} related words, "
            f"{sum(len(p['senses']) for p in polysemy)} other senses, "
            f"{sum(len(p['kept']) for p in polysemy)} judged distinct from their concept"
        )
    return lines


def verification_lines(stats: list[dict[str, Any]]) -> list[str]:
    """Acceptance of written examples per category, and a rejected example of each."""
    checked = [s["verification"] for s in stats if s.get("verification", {}).get("per_concept")]
    if not checked:
        return []
    rows = pl.DataFrame([r for v in checked for r in v["per_concept"]])
    table = (
        rows.group_by("category", maintain_order=True)
        .agg(pl.col("rows", "accepted", "unverified", "candidates", "passed").sum())
        .with_columns((pl.col("passed") / pl.col("candidates")).alias("acceptance_rate"))
    )
    v = checked[0]
    lines = [
        "",
        f"Verified synthesis (`dataset.verifier={v['verifier']}`, up to {v['max_attempts']}"
        f" rounds of {v['candidates']} candidate(s) per row; `unverified`: rows that never"
        " passed and kept their best candidate):",
        "",
        _md_table(table),
        "",
    ]
    for category, examples in sorted(checked[0].get("rejected_examples", {}).items()):
        if examples:
            e = examples[0]
            text = " ".join(str(e["output"]).split())[:160]
            lines.append(f'- rejected {category} for concept {e["concept_id"]}: "{text}"')
    return lines


RULE_ORDER = ("prepare_model", "dataset", "train", "detect", "steer", "judge")  # DAG order


def benchmark_seconds(path: str) -> float | None:
    """Wall seconds of one job from its Snakemake benchmark TSV (column `s`; the mean over
    repeats), None when the file is empty or unreadable (e.g. a stand-in without a row)."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        values = [float(r["s"]) for r in rows]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return sum(values) / len(values) if values else None


def timing_section(inputs: dict[str, str]) -> list[str]:
    """Wall time per rule from the jobs' benchmark files (report inputs of kind `bench`): jobs,
    total and max seconds, as each job last ran (a job reused from an earlier run keeps its
    time)."""
    per_rule: dict[str, list[float]] = {}
    untimed = 0
    for rule, path in run_inputs(inputs, "bench"):
        seconds = benchmark_seconds(path)
        if seconds is None:
            untimed += 1
            continue
        per_rule.setdefault(rule, []).append(seconds)
    if not per_rule:
        return []
    order = sorted(per_rule, key=lambda r: (RULE_ORDER.index(r) if r in RULE_ORDER else 99, r))
    table = pl.DataFrame(
        [
            {
                "rule": rule,
                "jobs": len(per_rule[rule]),
                "total s": f"{sum(per_rule[rule]):.1f}",
                "max s": f"{max(per_rule[rule]):.1f}",
            }
            for rule in order
        ],
        schema={"rule": pl.String, "jobs": pl.Int64, "total s": pl.String, "max s": pl.String},
    )
    total = sum(sum(v) for v in per_rule.values())
    lines = ["", "## Time per rule", ""]
    lines += [
        "Wall seconds of the jobs behind this report, from Snakemake's `benchmark:` files"
        f" (`benchmarks/<rule>/` under the results folder), {total:.0f} s in all; each job as it"
        " last ran, so a job reused from an earlier run keeps its time. Not listed:"
        " extract_activations (Snakemake allows no `benchmark:` on a rule eligible for"
        " between-workflow caching; its log says `stage acts done in N s`) and this report.",
        "",
        _md_table(table),
        "",
    ]
    if untimed:
        lines += [f"{untimed} benchmark files held no time.", ""]
    return lines


GENERATOR_TOTALS = (
    "requests",
    "cached",
    "calls",
    "prompt_tokens",
    "completion_tokens",
    "retries",
    "cost_usd",
    "seconds",
)


def _cell(row: dict[str, Any], name: str) -> str:
    """`value [lo, hi]` for a column with an interval, `–` when absent."""
    if row.get(name) is None:
        return "–"
    if row.get(f"{name}_lo") is None:
        return f"{row[name]:.3f}"
    return f"{row[name]:.3f} [{row[f'{name}_lo']:.3f}, {row[f'{name}_hi']:.3f}]"


def leaderboard_markdown(board: pl.DataFrame, baseline: str | None) -> str:
    """The leaderboard as a Markdown table, each mean with its 95% interval in brackets."""
    vs = f" vs {baseline}" if baseline else ""
    columns = {
        "method": lambda r: r["method"],
        "concepts": lambda r: f"{r['n_concepts']}" + ("" if r["scope"] == "all" else "*"),
        "coverage": lambda r: "–" if r["coverage"] is None else f"{r['coverage']:.0%}",
        "detection AUROC": lambda r: _cell(r, "detection_auroc"),
        f"Δ AUROC{vs}": lambda r: _cell(r, "detection_delta"),
        "hard-neg acc": lambda r: _cell(r, "hard_negative_acc"),
        "imbalanced F1": lambda r: _cell(r, "imbalanced_f1"),
        "steering": lambda r: _cell(r, "steering_score"),
        f"Δ steering{vs}": lambda r: _cell(r, "steering_delta"),
        f"winrate{vs}": lambda r: _cell(r, "winrate"),
        "concept / instr. / fluency": lambda r: (
            "–"
            if r["concept_score"] is None
            else " / ".join(
                f"{r[c]:.2f}" for c in ("concept_score", "instruction_score", "fluency_score")
            )
        ),
        "judge failures": lambda r: (
            "–" if r["judge_failures"] is None else str(r["judge_failures"])
        ),
    }
    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = [
        "| " + " | ".join(f(r) for f in columns.values()) + " |"
        for r in board.iter_rows(named=True)
    ]
    return "\n".join([head, sep, *body])


def scope_line(scope: dict[str, Any] | None, concepts: pl.DataFrame) -> str:
    """ "N of M concepts" when a cap leaves concepts of the source out (`shards.scope`)."""
    n = concepts.height
    if not scope or scope.get("source_concepts") in (None, n):
        return f"- concepts: all {n} of the dataset"
    why = (
        f" (`dataset.max_concepts={scope['max_concepts']}`)"
        if scope.get("max_concepts") is not None
        else ""
    )
    return f"- concepts: **{n} of {scope['source_concepts']}**{why}; the others were left out"


def _method_section(result: MethodResult, baseline: str | None) -> list[str]:
    lines = ["", f"## {result.name}", ""]
    if result.limit is not None:
        lines += [
            f"Limited by `method.{result.name}.max_concepts={result.limit}`: its means cover "
            f"{len(result.scope)} concepts, and its comparisons against `{baseline}` use those "
            "same concepts.",
            "",
        ]
    if result.unmatched:
        lines += ["Concepts without parameters (entered at chance / 0, counted in coverage):", ""]
        lines += [f"- {cid}: {why}" for cid, why in sorted(result.unmatched.items())]
        lines.append("")
    if result.detection is not None:
        if result.imbalance_ratio is not None:
            lines += [f"Imbalanced pool: {result.imbalance_ratio:.1f} negatives per positive.", ""]
        det = result.detection.drop(
            [c for c in ("roc_auc_lo", "roc_auc_hi") if c not in result.detection.columns]
        )
        lines += [
            "Detection per concept (roc_auc_lo/hi: DeLong 95% interval):",
            "",
            _md_table(det),
            "",
        ]
    if result.steering is not None:
        lines += [
            "Steering per concept (factor chosen on the selection split, scores on held-out"
            " instructions):",
            "",
            _md_table(result.steering),
            "",
        ]
    return lines


def write_report(
    methods: list[dict],
    cfg: dict,
    inputs: dict[str, str],
    outputs: dict[str, str],
    scope: dict[str, Any] | None = None,
) -> None:
    """report.md, leaderboard.csv and the resolved config of one experiment; `scope` is the
    dataset's `shards.scope` (how many concepts the source offers and the run keeps)."""
    board, results, concepts = build_leaderboard(methods, inputs, cfg)
    with store.atomic_path(outputs["leaderboard"], ".csv") as tmp:
        board.write_csv(tmp, float_precision=4)
    model, ds, judge, st = cfg["model"], cfg["dataset"], cfg["judge"], cfg["steering"]
    baseline = cfg["report"]["winrate_baseline"]
    if baseline not in results:
        baseline = None
    lines = [
        f"# axflow report: {cfg['name']}",
        "",
        f"- model: `{model['name']}` layer {model['layer']} ({model['dtype']})",
        f"- dataset: `{ds['name']}` ({ds['source']})",
        scope_line(scope, concepts),
        f"- judge: `{judge['name']}`; steering factors {st['factors']}, "
        f"{st['max_new_tokens']} new tokens, temperature {st['temperature']}",
        f"- resolved config: `{Path(outputs['config']).name}` beside this file",
        "",
        "## Leaderboard",
        "",
        leaderboard_markdown(board, baseline),
        "",
        "How to read it:",
        "",
        "- Detection: mean over concepts of the ROC AUC of max-pooled token scores (hard negatives"
        " excluded). Steering: harmonic mean of the judge's concept / instruction / fluency scores"
        " (0–2) on held-out instructions at the factor chosen on the selection half.",
        f"- Every mean covers the same {concepts.height} concepts, except methods marked * (limited"
        " by their config, compared on their own subset). A concept a method could not handle"
        " enters at chance: AUROC 0.5, steering 0 (AxBench's score of a failed generation);"
        " `coverage` is the share of concepts measured rather than imputed.",
        f"- Brackets: 95% percentile-bootstrap intervals over concepts (seed {cfg['seed']},"
        " 2000 resamples). Δ columns: paired bootstrap of the per-concept difference against"
        f" `{baseline}`; an interval that contains 0 means the data cannot tell the two apart.",
        f"- Winrate: per concept, held-out steering score against `{baseline}` (win 1, tie 0.5,"
        " loss 0), as paper Table 3 counts it (the paper's baseline is SAE; AxBench's code compares"
        " per generation against prompting). Imbalanced F1: each concept's positives against one"
        " shared pool of negative eval rows, F1 at its best threshold (pool target "
        f"{cfg['report']['imbalance_factor']}x positives).",
    ]
    failures = int(board["judge_failures"].fill_null(0).sum())
    unrated = int(board["unrated"].fill_null(0).sum())
    if cfg["judge"].get("unparseable") == "zero":
        rule = "an unparseable reply scored 0, AxBench's rule (`judge.unparseable=zero`)"
    else:
        rule = "re-asked, then counted here and never scored 0"
    lines.append(
        f"- Judge failures (sub-ratings that could not be obtained; {rule}): "
        f"{failures}; generations without an overall score: {unrated}."
    )
    lines += data_section(inputs)
    for result in results.values():
        lines += _method_section(result, baseline)
    lines += timing_section(inputs)
    with store.atomic_path(outputs["report"], ".md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    store.write_json(cfg, outputs["config"])
    if "html" in outputs:  # the page and its figures (axflow.report.html)
        from axflow.report.html import write_html

        write_html(methods, board, results, concepts, cfg, inputs, outputs, scope)


def write_sweep_report(cells: list[dict], inputs: dict[str, str], outputs: dict[str, str]) -> None:
    """All cells' leaderboards in one table, the swept keys as columns (merged by method)."""
    boards = []
    for i, cell in enumerate(cells):
        board = pl.read_csv(inputs[f"leaderboard__{i}"], infer_schema_length=None)
        # A column that is empty in one cell reads as text; every column but the names is numeric.
        empty = [
            c
            for c, t in board.schema.items()
            if t == pl.String and c not in ("method", "kind", "scope")
        ]
        board = board.with_columns(pl.col(empty).cast(pl.Float64, strict=False))
        swept = [pl.lit(value, dtype=pl.String).alias(key) for key, value in cell["swept"].items()]
        boards.append(board.with_columns(*swept, pl.lit(cell["path"]).alias("cell")))
    keys = list(cells[0]["swept"])
    merged = pl.concat(boards, how="diagonal_relaxed")
    merged = merged.select(*keys, pl.exclude(*keys, "cell"), "cell").sort(
        ["steering_score", "detection_auroc"], descending=True, nulls_last=True
    )
    with store.atomic_path(outputs["leaderboard"], ".csv") as tmp:
        merged.write_csv(tmp, float_precision=4)
    shown = pl.DataFrame(
        [
            {
                **{k: r[k] for k in (*keys, "method")},
                **{c: _cell(r, c) for c in ("detection_auroc", "steering_score", "winrate")},
            }
            for r in merged.iter_rows(named=True)
        ],
        schema={
            k: pl.String for k in (*keys, "method", "detection_auroc", "steering_score", "winrate")
        },
    )
    lines = [
        f"# axflow sweep report: {Path(outputs['report']).parent.name}",
        "",
        f"{len(cells)} cells over {', '.join(f'`{k}`' for k in keys)}. Each cell's own report and"
        " resolved config (`config.json`, from which its numbers reproduce) are in its folder:",
        "",
        *[f"- `{c['path']}`" for c in cells],
        "",
        "## Leaderboard",
        "",
        _md_table(shown),
        "",
        "Brackets: 95% bootstrap intervals over each cell's concepts (see the cells' reports).",
        "",
    ]
    with store.atomic_path(outputs["report"], ".md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")

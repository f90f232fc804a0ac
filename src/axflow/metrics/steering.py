"""Steering factor selection (AxBench §3.3): pick on the select split, report on the test split."""

from __future__ import annotations

import polars as pl

REQUIRED_COLUMNS = ("concept_id", "split", "factor", "overall")


def select_factor(df: pl.DataFrame) -> pl.DataFrame:
    """Per concept, the factor with the best mean `overall` on the select split, scored on test.

    `df` holds one method's per-generation rows (concept_id, split "select"/"test", factor,
    overall). Ties in the select mean go to the smaller factor. Factor-free methods (every factor
    null) average each split directly. Null `overall` values are left out of the means; `n_test`
    counts the test ratings behind `test_score` (0 and a null score if the chosen factor has
    none). Returns concept_id, factor, select_score, test_score, n_test, sorted by concept_id.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"select_factor: missing column(s) {missing}; need {list(REQUIRED_COLUMNS)}"
        )
    df = df.select(
        pl.col("concept_id").cast(pl.Int64),
        pl.col("split").cast(pl.String),
        pl.col("factor").cast(pl.Float64),
        pl.col("overall").cast(pl.Float64),
    )
    unknown = sorted(set(df["split"].unique().to_list()) - {"select", "test"})
    if unknown:
        raise ValueError(f"select_factor: unknown split value(s) {unknown}; use 'select' or 'test'")
    n_null = df["factor"].null_count()
    if 0 < n_null < df.height:
        raise ValueError(
            f"select_factor: {n_null} of {df.height} rows have a null factor; a method is either "
            "factor-free (all null) or not (none null)"
        )
    factor_free = df.height > 0 and n_null == df.height

    means = df.group_by("concept_id", "split", "factor").agg(
        pl.col("overall").mean().alias("score"), pl.col("overall").count().alias("n")
    )
    select = means.filter(pl.col("split") == "select")
    test = means.filter(pl.col("split") == "test").select(
        "concept_id", "factor", pl.col("score").alias("test_score"), pl.col("n").alias("n_test")
    )
    concepts = df.select("concept_id").unique()
    if factor_free:
        chosen = concepts.join(
            select.select("concept_id", pl.col("score").alias("select_score")),
            on="concept_id",
            how="left",
        ).with_columns(pl.lit(None, dtype=pl.Float64).alias("factor"))
        out = chosen.join(test.drop("factor"), on="concept_id", how="left")
    else:
        # Best select mean first, smaller factor first among equals; keep one row per concept.
        best = (
            select.sort(
                ["concept_id", "score", "factor"], descending=[False, True, False], nulls_last=True
            )
            .group_by("concept_id", maintain_order=True)
            .first()
            .select("concept_id", "factor", pl.col("score").alias("select_score"))
        )
        chosen = concepts.join(best, on="concept_id", how="left")
        out = chosen.join(test, on=["concept_id", "factor"], how="left")
    return out.select(
        "concept_id",
        "factor",
        "select_score",
        "test_score",
        pl.col("n_test").fill_null(0).cast(pl.Int64),
    ).sort("concept_id")


def winrate(method: pl.DataFrame, baseline: pl.DataFrame, tie: float = 1e-6) -> float | None:
    """Mean over shared concepts of win 1 / tie 0.5 / loss 0 of `method` against `baseline`.

    Both frames hold one row per concept (concept_id, test_score), as `select_factor` returns
    (AxBench Table 3 compares per-concept held-out scores). Concepts missing a score on either
    side are left out; None when no concept is shared.
    """
    both = method.select("concept_id", pl.col("test_score").alias("a")).join(
        baseline.select("concept_id", pl.col("test_score").alias("b")), on="concept_id"
    )
    both = both.drop_nulls()
    if both.height == 0:
        return None
    diff = both["a"] - both["b"]
    points = (diff > tie).cast(pl.Float64) + 0.5 * (diff.abs() <= tie).cast(pl.Float64)
    return float(points.mean())

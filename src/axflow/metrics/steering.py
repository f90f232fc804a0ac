"""Steering factor selection (AxBench §3.3): pick on the select split, report on the test split."""

from __future__ import annotations

import numpy as np
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


def winrate_points(method: np.ndarray, baseline: np.ndarray, tie: float = 1e-6) -> np.ndarray:
    """Per concept: 1 where `method` scores above `baseline`, 0.5 within `tie`, else 0.

    Their mean is the winrate of paper Table 3 (per-concept held-out scores); AxBench's code
    compares per generation instead, with the same tie rule.
    """
    diff = np.asarray(method, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    return (diff > tie) + 0.5 * (np.abs(diff) <= tie)

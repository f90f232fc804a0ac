"""Rejection sampling of written examples: write, verify, resample the ones that fail.

Each failed example is rewritten with a fresh seed, best of `candidates` per round, for at most
`dataset.max_attempts` rounds; what was accepted, rejected and resampled is counted per concept
and category for `stats.json` and the report. The genre's shared train negatives are checked
too, and reported rather than resampled.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from axflow.calls import row_seed
from axflow.data.generators import ChatRequest
from axflow.data.validate import SHARED_NEGATIVE_ID
from axflow.data.verify import Check, NoVerifier, Verdict, Verifier


def _check(r: dict[str, Any], output: str, concepts: dict[int, str]) -> Check:
    hard = r["category"] == "hard negative"
    return Check(
        category=r["category"],
        concept=concepts[r["concept_id"]],
        instruction=r["input"],
        output=output,
        contrast=r["output_concept"] if hard else None,
    )


_STAT_KEYS = ("rows", "accepted", "short", "unverified", "candidates", "passed", "attempts")
_REJECTED_SAMPLE = 3


def _example(r: dict[str, Any], check: Check, verdict: Verdict, attempt: int) -> dict[str, Any]:
    return {
        "concept_id": r["concept_id"],
        "concept": check.concept,
        "output_concept": r["output_concept"],
        "attempt": attempt,
        "concept_similarity": verdict.concept_similarity,
        "output": check.output,
    }


def write_verified(
    pending: list[tuple[dict[str, Any], ChatRequest]],
    names: dict[int, str],
    writer,
    verifier: Verifier,
    cut,
    cfg: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Write every pending row, verify it, and resample the failures (rejection sampling).

    Round a (0 .. max_attempts-1) asks `candidates` answers for each row still open, in one
    batched writer call; candidate (a, j) has seed row_seed(row seed, "attempt", a, j), except
    (0, 0), which keeps the row's own seed (the unverified request: its cache entry is reused),
    so every attempt is its own call-cache key and a rerun is served from the cache. Among the
    candidates of a round that pass, the best scoring one is kept (best-of-n). A row with no
    passing candidate after the last round is left out (`dataset.shortfall: error`, so
    validation names its concept and category), or, with `shortfall: keep_best`, filled with its
    best-scoring candidate of all rounds and counted as `unverified` (hard negatives, which are
    optional, are left out either way). Returns the rows, in pending order, and the acceptance
    counts per concept and category.
    """
    trusting = isinstance(verifier, NoVerifier)
    attempts = 1 if trusting else int(cfg.get("max_attempts", 1))
    n_cand = 1 if trusting else int(cfg.get("candidates", 1))
    if attempts < 1 or n_cand < 1:
        raise ValueError("dataset.max_attempts and dataset.candidates must be at least 1")
    keep_best = cfg.get("shortfall", "error") == "keep_best"
    accepted: dict[int, str] = {}
    fallback: dict[int, tuple[float, str]] = {}  # row -> best failing candidate so far
    candidates = passed = 0
    per: dict[tuple[int, str], dict[str, int]] = {}
    rejected: dict[str, list[dict[str, Any]]] = {}  # a few failed candidates per category
    for r, _ in pending:
        st = per.setdefault((r["concept_id"], r["category"]), dict.fromkeys(_STAT_KEYS, 0))
        st["rows"] += 1
    for attempt in range(attempts):
        open_rows = [i for i in range(len(pending)) if i not in accepted]
        if not open_rows:
            break
        requests = []
        for i in open_rows:
            req = pending[i][1]
            for j in range(n_cand):
                s = req.seed if attempt == j == 0 else row_seed(req.seed, "attempt", attempt, j)
                requests.append(ChatRequest(req.user, s, req.max_tokens, req.temperature))
        texts = [cut(t) for t in writer(requests)]
        checks = [
            _check(pending[i][0], texts[k * n_cand + j], names)
            for k, i in enumerate(open_rows)
            for j in range(n_cand)
        ]
        verdicts = verifier(checks)
        for k, i in enumerate(open_rows):
            r = pending[i][0]
            st = per[(r["concept_id"], r["category"])]
            mine = list(range(k * n_cand, (k + 1) * n_cand))
            good = [m for m in mine if verdicts[m].ok]
            st["candidates"] += n_cand
            st["passed"] += len(good)
            candidates += n_cand
            passed += len(good)
            if good:
                best = max(good, key=lambda m: verdicts[m].score)  # first of equals: lowest j
                accepted[i] = texts[best]
                st["accepted"] += 1
                st["attempts"] += attempt + 1
            else:
                top = max(mine, key=lambda m: verdicts[m].score)
                if i not in fallback or verdicts[top].score > fallback[i][0]:
                    fallback[i] = (verdicts[top].score, texts[top])
                if attempt == attempts - 1:
                    st["short"] += 1
                    if keep_best and r["category"] != "hard negative":
                        accepted[i] = fallback[i][1]
                        st["unverified"] += 1
            bad = [m for m in mine if not verdicts[m].ok]
            sample = rejected.setdefault(r["category"], [])
            if bad and len(sample) < _REJECTED_SAMPLE:
                sample.append(_example(r, checks[bad[0]], verdicts[bad[0]], attempt))
    rows = [{**pending[i][0], "output": accepted[i]} for i in sorted(accepted)]
    report: dict[str, Any] = {
        "verifier": verifier.name,
        "max_attempts": attempts,
        "candidates": n_cand,
        "shortfall": "keep_best" if keep_best else "error",
        "written": candidates,
        "passed": passed,
        "acceptance_rate": passed / candidates if candidates else None,
        "rejected_examples": rejected,
        "per_concept": [
            {
                "concept_id": cid,
                "category": cat,
                **st,
                "acceptance_rate": st["passed"] / st["candidates"] if st["candidates"] else None,
                "mean_attempts": st["attempts"] / st["accepted"] if st["accepted"] else None,
            }
            for (cid, cat), st in sorted(per.items())
        ],
    }
    return rows, report


def shared_negative_check(
    rows: list[dict[str, Any]], concepts: pl.DataFrame, verifier: Verifier
) -> list[dict[str, Any]]:
    """How many of each concept's shared train negatives the verifier finds carrying the concept.

    Reported, not resampled: the pool is the target's greedy answers, shared by the genre.
    """
    if isinstance(verifier, NoVerifier):
        return []
    shared = [r for r in rows if r["concept_id"] == SHARED_NEGATIVE_ID]
    pairs = [
        (c["concept_id"], Check("negative", c["concept"], r["input"], r["output"]))
        for c in concepts.iter_rows(named=True)
        for r in shared
        if r["concept_genre"] == c["genre"]
    ]
    verdicts = verifier([chk for _, chk in pairs])
    out: dict[int, dict[str, Any]] = {}
    for (cid, _), v in zip(pairs, verdicts, strict=True):
        st = out.setdefault(cid, {"concept_id": cid, "checked": 0, "carry_concept": 0})
        st["checked"] += 1
        st["carry_concept"] += not v.ok
    return list(out.values())

"""Malformed input, fed through the user's entry points, ends in a clear error.

Each case is a config or input file a user could get wrong. It must end with a non-zero exit, a
message naming the config key or file and the fix, no Python traceback, and nothing written
under its results folder. Planning errors go through `axflow config` / `axflow run --dry-run`
in process (fast) and a few through `snakemake --dry-run` (the Snakefile's own path); errors only
a job can see (an imported concept without positives, a truncated artefact in results/) run the
workflow. The last test prints "tried N / clear errors M / crashes K".
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from axflow import cli
from dag import snakemake

TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\s*File \".*\", line \d+", re.M)
OUTCOMES: dict[str, str] = {}  # case id -> "clear" | "unclear" | "crash"
HIDDEN = 576  # SmolLM2-135M's residual width; the default model has 30 blocks


@dataclass(frozen=True)
class Case:
    id: str
    overrides: tuple[str, ...]  # "{name}" is replaced by the path of fixture file `name`
    expect: tuple[str, ...]  # regexes the message must match: the key or file, and the fix
    command: str = "config"  # the `axflow` sub-command (run adds --dry-run)


def case(id: str, overrides: str, *expect: str, command: str = "config") -> Case:
    return Case(id, tuple(overrides.split()), expect, command)


SAE = "method=[diffmean,sae] method.sae.source=load method.sae.path={%s}"
AXBENCH = "dataset=axbench_concept10 dataset.axbench_dir={%s}"

CASES = [
    # configs
    case("unknown key", "model.layr=3", r"model\.layr", r"\+model\.layr=3"),
    case("unknown top-level key", "+modle.layer=3", r"modle", r"not allowed"),
    case("unknown group option", "model=gpt5", r"model/gpt5", r"[Aa]vailable options"),
    case("unknown judge key", "+judge.concept_treshold=0.2", r"concept_treshold", r"Fix config"),
    case("unknown method key", "+method.probe.lr_typo=1", r"method\.probe.*lr_typo"),
    case("wrong type: layer", "model.layer=ten", r"model\.layer", r"integer"),
    case("wrong type: factors", "steering.factors=0.5", r"steering\.factors", r"array"),
    case("wrong type: shards", "concept_shards=two", r"concept_shards", r"integer"),
    case("out of range: max_concepts", "dataset.max_concepts=0", r"max_concepts", r"minimum"),
    case("empty method list", "method=[]", r"'method' is a required property", r"Fix these keys"),
    case("missing model path", "model=gemma2_2b_it", r"model\.path: not set", r"set model\.path"),
    case(
        "model path without config.json",
        "model=gemma2_2b_it model.path={empty_dir}",
        r"model\.path: .* has no config\.json",
        r"set model\.path",
    ),
    case("model package missing", "model.package=no_such_pkg", r"model\.package", r"install"),
    case(
        "bad override syntax: bracket",
        "model.layer=[1,",
        r"override 'model\.layer=\[1,'",
        r"override_grammar",
    ),
    case("bad override syntax: no value", "model.layer", r"model\.layer", r"=|EQUAL"),
    case("model.layer past the model", "model.layer=999", r"model\.layer: 999", r"0\.\.29|0 to 29"),
    case("model.layer=30 on 30 blocks", "model.layer=30", r"model\.layer: 30", r"0 to 29"),
    case(
        "judge thresholds one number",
        "judge.concept_thresholds=[0.5]",
        r"judge\.concept_thresholds",
        r"two numbers",
    ),
    case(
        "judge thresholds reversed",
        "judge.concept_thresholds=[0.5,0.1]",
        r"judge\.concept_thresholds",
        r"low <= high",
    ),
    case(
        "generator key typo",
        "generator=openai +generator.temprature=1",
        r"temprature",
        r"Fix config/generator/openai\.yaml",
    ),
    case(
        "axbench without folder",
        "dataset=axbench_concept10 dataset.axbench_dir=null",
        r"dataset\.axbench_dir",
        r"set it",
    ),
    case(
        "axbench folder missing",
        "dataset=axbench_concept10 dataset.axbench_dir=/no/such/dir",
        r"dataset\.axbench_dir: /no/such/dir",
        r"point it",
    ),
    case("sweep of results_dir", "results_dir=a,b", r"results_dir", r"cannot be swept"),
    case(
        "run --dry-run, missing model path",
        "model=gemma2_2b_it",
        r"model\.path: not set",
        r"set model\.path",
        command="run",
    ),
    case("run --dry-run, layer", "model.layer=999", r"model\.layer: 999", command="run"),
    # concept files
    case("concepts: empty file", "dataset.concepts={c_empty}", r"c_empty\.jsonl", r"no rows"),
    case("concepts: blank lines only", "dataset.concepts={c_blank}", r"c_blank\.txt", r"add"),
    case("concepts: duplicate text", "dataset.concepts={c_dup}", r"c_dup\.jsonl", r"duplicates"),
    case(
        "concepts: duplicate ids",
        "dataset.concepts={c_dupid}",
        r"c_dupid\.jsonl.*concept_id",
        r"unique",
    ),
    case("concepts: non-UTF-8", "dataset.concepts={c_latin1}", r"c_latin1\.txt: line 2", r"UTF-8"),
    case(
        "concepts: non-UTF-8 jsonl",
        "dataset.concepts={c_latin1j}",
        r"c_latin1j\.jsonl",
        r"save the file as UTF-8",
    ),
    case("concepts: 10 MB line", "dataset.concepts={c_huge}", r"c_huge\.txt: line 2", r"shorten"),
    case(
        "concepts: URL only", "dataset.concepts={c_url}", r"c_url\.txt: line 1 is a URL", r"export"
    ),
    case(
        "concepts: bad JSON line",
        "dataset.concepts={c_badjson}",
        r"c_badjson\.jsonl: line 2",
        r"one JSON object per line",
    ),
    case(
        "concepts: no concept column",
        "dataset.concepts={c_nocol}",
        r"c_nocol\.csv.*'concept'",
        r"add a 'concept'",
    ),
    case(
        "concepts: bad genre",
        "dataset.concepts={c_genre}",
        r"c_genre\.jsonl.*genre",
        r"must be one of",
    ),
    case("concepts: unknown extension", "dataset.concepts={c_xlsx}", r"c_xlsx\.xlsx", r"rename"),
    case(
        "concepts: file missing",
        "dataset.concepts=/no/such/concepts.jsonl",
        r"concepts\.jsonl: file not found",
        r"check the path",
    ),
    # instruction pool and steering instructions
    case(
        "instructions: missing genre column",
        "dataset.instructions={i_nogenre}",
        r"dataset\.instructions: .*i_nogenre\.jsonl.*'genre'",
        r"give every",
    ),
    case(
        "instructions: missing instruction column",
        "dataset.instructions={i_nocol}",
        r"i_nocol\.jsonl.*'instruction'",
        r"add an",
    ),
    case(
        "instructions: too few rows",
        "dataset.instructions={i_few}",
        r"dataset\.instructions: .*too few",
        r"add instructions",
    ),
    case(
        "instructions: bad split",
        "dataset.instructions={i_split}",
        r"i_split\.jsonl.*split",
        r"must be one of",
    ),
    case(
        "steering: missing column",
        "dataset.steering_instructions={s_nocol}",
        r"dataset\.steering_instructions: .*s_nocol\.jsonl.*'instruction'",
        r"add an",
    ),
    case(
        "steering: too few rows",
        "dataset.steering_instructions={s_few}",
        r"s_few\.jsonl has 3 instruction",
        r"lower steering\.instructions_per_concept",
    ),
    case(
        "steering: duplicates",
        "dataset.steering_instructions={s_dup}",
        r"s_dup\.jsonl",
        r"remove or reword",
    ),
    # imported (AxBench) datasets
    case(
        "axbench: missing column",
        AXBENCH % "ax_nocol",
        r"train_data\.parquet: missing.*"
        r"output_concept",
        r"re-export",
    ),
    case(
        "axbench: wrong dtype",
        AXBENCH % "ax_dtype",
        r"column 'concept_id' has type \w*string",
        r"re-export",
    ),
    case("axbench: no metadata", AXBENCH % "ax_nometa", r"no metadata\.jsonl", r"point"),
    case(
        "axbench: truncated parquet",
        AXBENCH % "ax_cut",
        r"train_data\.parquet: not a readable",
        r"copy or export it again",
    ),
    # SAE files
    case("sae: wrong shape", SAE % "sae_shape", r"method\.sae\.path: .*W_dec", r"set method"),
    case("sae: missing tensor", SAE % "sae_nothr", r"missing tensor.*threshold", r"set method"),
    case("sae: wrong width", SAE % "sae_width", r"64-dimensional.*576", r"set method"),
    case("sae: SAELens missing tensor", SAE % "sae_lens", r"missing tensor.*W_dec", r"set method"),
    case("sae: path missing", SAE % "sae_none", r"method\.sae\.path", r"source=train"),
]


# --------------------------------------------------------------------------------------------
# Fixture files


def write_files(root: Path) -> dict[str, Path]:
    f: dict[str, Path] = {}

    def put(name: str, content: str | bytes, suffix: str) -> None:
        path = root / f"{name}{suffix}"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        f[name] = path

    def jsonl(rows: list[dict]) -> str:
        return "".join(json.dumps(r) + "\n" for r in rows)

    (root / "empty_dir").mkdir()
    f["empty_dir"] = root / "empty_dir"
    put("c_empty", "", ".jsonl")
    put("c_blank", "\n   \n\n", ".txt")
    put("c_dup", jsonl([{"concept": "cats"}, {"concept": "dogs"}, {"concept": "cats"}]), ".jsonl")
    put(
        "c_dupid",
        jsonl([{"concept_id": 1, "concept": "a"}, {"concept_id": 1, "concept": "b"}]),
        ".jsonl",
    )
    put("c_latin1", "cats\ncaf\xe9 culture\n".encode("latin-1"), ".txt")
    put("c_latin1j", '{"concept": "caf\xe9"}\n'.encode("latin-1"), ".jsonl")
    put("c_huge", "cats\n" + "x" * (10 * 2**20) + "\n", ".txt")
    put("c_url", "https://www.neuronpedia.org/gemma-2-2b/10-gemmascope-res-16k/1\n", ".txt")
    put("c_badjson", '{"concept": "cats"}\n{"concept": "dogs"\n', ".jsonl")
    put("c_nocol", "name,genre\ncats,text\n", ".csv")
    put("c_genre", jsonl([{"concept": "cats", "genre": "poetry"}]), ".jsonl")
    put("c_xlsx", b"PK\x03\x04", ".xlsx")
    pool = [
        {"genre": g, "split": s, "instruction": f"{g} {s} task {i}"}
        for g in ("text", "code", "math")
        for s in ("train", "test")
        for i in range(3)
    ]
    put("i_nogenre", jsonl([{k: v for k, v in r.items() if k != "genre"} for r in pool]), ".jsonl")
    put("i_nocol", jsonl([{"genre": r["genre"], "split": r["split"]} for r in pool]), ".jsonl")
    put("i_few", jsonl(pool), ".jsonl")
    put("i_split", jsonl([{**pool[0], "split": "validation"}]), ".jsonl")
    steer = [{"instruction": f"Write about topic {i}."} for i in range(12)]
    put("s_nocol", jsonl([{"prompt_text": r["instruction"]} for r in steer]), ".jsonl")
    put("s_few", jsonl(steer[:3]), ".jsonl")
    put("s_dup", jsonl(steer + steer[:1]), ".jsonl")
    for name, frame in axbench_variants().items():
        f[name] = write_axbench(root / name, *frame)
    cut = f["ax_cut"] / "train_data.parquet"
    cut.write_bytes(cut.read_bytes()[:100])
    f.update(write_saes(root))
    return f


def axbench_tables(positives_of_1: int = 2) -> tuple[list[dict], pl.DataFrame, pl.DataFrame]:
    """A two-concept AxBench task in the released layout (metadata, train, eval)."""
    meta = [
        {"concept_id": 0, "concept": "cats", "concept_genres_map": {"cats": ["text"]}},
        {"concept_id": 1, "concept": "dogs", "concept_genres_map": {"dogs": ["text"]}},
    ]

    def rows(cid: int, concept: str, category: str, n: int, split: str) -> list[dict]:
        return [
            {
                "input": f"{split} question {cid} {category} {i}",
                "output": f"an answer about {concept} {i}",
                "output_concept": concept,
                "concept_genre": "text",
                "category": category,
                "dataset_category": "instruction",
                "concept_id": cid,
            }
            for i in range(n)
        ]

    train = rows(0, "cats", "positive", 2, "t") + rows(1, "dogs", "positive", positives_of_1, "t")
    train += rows(-1, "EEEEE", "negative", 2, "t")
    held = rows(0, "cats", "positive", 2, "e") + rows(0, "cats", "negative", 2, "e")
    held += rows(1, "dogs", "positive", 2, "e") + rows(1, "dogs", "negative", 2, "e")
    return meta, pl.DataFrame(train), pl.DataFrame(held)


def axbench_variants() -> dict[str, tuple]:
    meta, train, held = axbench_tables()
    return {
        "ax_good": (meta, train, held),
        "ax_nopos": axbench_tables(positives_of_1=0),
        "ax_nocol": (meta, train.drop("output_concept"), held),
        "ax_dtype": (meta, train.with_columns(pl.col("concept_id").cast(pl.String)), held),
        "ax_nometa": (None, train, held),
        "ax_cut": (meta, train, held),
    }


def write_axbench(folder: Path, meta, train: pl.DataFrame, held: pl.DataFrame) -> Path:
    folder.mkdir()
    if meta is not None:
        (folder / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    train.write_parquet(folder / "train_data.parquet")
    held.write_parquet(folder / "latent_eval_data.parquet")
    return folder


def write_saes(root: Path) -> dict[str, Path]:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)

    def params(d: int, n: int = 8) -> dict[str, np.ndarray]:
        return {
            "W_enc": rng.normal(size=(d, n)).astype(np.float32),
            "b_enc": np.zeros(n, np.float32),
            "W_dec": rng.normal(size=(n, d)).astype(np.float32),
            "b_dec": np.zeros(d, np.float32),
            "threshold": np.zeros(n, np.float32),
        }

    out: dict[str, Path] = {}
    variants = {
        "sae_shape": {**params(HIDDEN), "W_dec": params(HIDDEN)["W_dec"].T.copy()},
        "sae_nothr": {k: v for k, v in params(HIDDEN).items() if k != "threshold"},
        "sae_width": params(64),
    }
    for name, arrays in variants.items():
        (root / name).mkdir()
        np.savez(root / name / "params.npz", **arrays)
        out[name] = root / name
    lens = root / "sae_lens"
    lens.mkdir()
    (lens / "cfg.json").write_text(json.dumps({"architecture": "jumprelu", "d_in": HIDDEN}))
    save_file(
        {k: v for k, v in params(HIDDEN).items() if k != "W_dec"},
        str(lens / "sae_weights.safetensors"),
    )
    out["sae_lens"] = lens
    out["sae_none"] = root / "no_such_sae"
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return write_files(tmp_path_factory.mktemp("malformed"))


# --------------------------------------------------------------------------------------------
# Judging an outcome


def artefacts(results: Path) -> set[str]:
    """Files under a results folder, logs aside (a failed job's log is where its error goes)."""
    if not results.exists():
        return set()
    return {str(p) for p in results.rglob("*") if p.is_file() and "logs" not in p.parts}


def judge(case_id: str, rc, output: str, expect, written: set[str], crashed: bool = False) -> str:
    """Record one case's outcome ("clear", "unclear" or "crash"); return why it is not clear."""
    problems = []
    if crashed or TRACEBACK.search(output):
        problems.append("a Python traceback")
    if rc in (0, None):
        problems.append(f"exit status {rc}")
    problems += [f"no match for {e!r}" for e in expect if not re.search(e, output, re.S)]
    if written:
        problems.append(f"files written: {sorted(written)[:5]}")
    crash = crashed or bool(TRACEBACK.search(output))
    OUTCOMES[case_id] = "crash" if crash else "unclear" if problems else "clear"
    return "; ".join(problems) + f"\n--- output ---\n{output[-3000:]}"


def fill(overrides, files: dict[str, Path], results: Path) -> list[str]:
    argv = [o.format(**{k: str(v) for k, v in files.items()}) for o in overrides]
    if not any(o.startswith("results_dir=") for o in argv):
        argv += [f"results_dir={results}", f"cache_dir={results}/cache"]
    return argv


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_planning_rejects_malformed_input(c: Case, files, tmp_path):
    """`axflow config` / `axflow run --dry-run`, in process: planning stops before any job."""
    results = tmp_path / "results"
    argv = [c.command, *(["--dry-run"] if c.command == "run" else [])]
    argv += fill(c.overrides, files, results)
    out, err = io.StringIO(), io.StringIO()
    rc, crashed = None, False
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except SystemExit as exit_:  # argparse
            rc = exit_.code
        except Exception:  # a crash is what this test counts
            crashed = True
            err.write(traceback.format_exc())
    output = out.getvalue() + err.getvalue()
    why = judge(c.id, rc, output, c.expect, artefacts(results), crashed)
    assert OUTCOMES[c.id] == "clear", why


SNAKEMAKE_CASES = [
    case(
        "snakemake: model.layer past the model",
        "model.layer=999",
        r"ConfigError: config key model\.layer: 999",
        r"set model\.layer to 0 to 29",
    ),
    case(
        "snakemake: bad override syntax",
        "model.layer=[1,",
        r"override 'model\.layer=\[1,'",
        r"override_grammar",
    ),
]


@pytest.mark.parametrize("c", SNAKEMAKE_CASES, ids=[c.id for c in SNAKEMAKE_CASES])
def test_snakefile_reports_planning_errors_without_traceback(c: Case, files, tmp_path):
    """The README's own command: snakemake plans in the Snakefile, which prints the message."""
    results = tmp_path / "results"
    proc = snakemake("--dry-run", overrides=fill(c.overrides, files, results))
    why = judge(c.id, proc.returncode, proc.stdout + proc.stderr, c.expect, artefacts(results))
    assert OUTCOMES[c.id] == "clear", why


# --------------------------------------------------------------------------------------------
# Errors only a job can see: the workflow runs


def axbench_overrides(folder: Path, results: Path) -> list[str]:
    return [
        "dataset=axbench_concept10",
        f"dataset.axbench_dir={folder}",
        "method=[diffmean]",
        *(f"dataset.{n}=2" for n in ("train_positive", "train_negative")),
        *(f"dataset.{n}=2" for n in ("eval_positive", "eval_negative")),
        f"results_dir={results}",
        f"cache_dir={results}/cache",
    ]


def planned_outputs(overrides: list[str]) -> list[str]:
    """Every output path of the DAG, as snakemake plans it (a forced dry run's job list); read
    from snakemake, so the keys are the workflow's own."""
    proc = snakemake("--dry-run", "--forceall", overrides=overrides)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line.strip() for line in proc.stdout.splitlines()]
    return [p for line in lines if line.startswith("output: ") for p in line[8:].split(", ")]


def job_output(proc, results: Path) -> str:
    logs = "\n".join(p.read_text() for p in sorted(results.glob("logs/**/*.log")))
    return proc.stdout + proc.stderr + logs


def test_data_job_rejects_an_imported_concept_without_positives(files, tmp_path):
    """Planning reads an AxBench folder's metadata and Parquet footers; the rows are the data
    job's: it must stop naming the file, the concept and the fix, and write nothing."""
    results = tmp_path / "results"
    proc = snakemake("--until", "dataset", overrides=axbench_overrides(files["ax_nopos"], results))
    expect = (
        r"ax_nopos/train_data\.parquet: concept 1 \('dogs'\) has no positive examples",
        r"generate or import its data, or drop it",
    )
    case_id = "job: imported concept without positives"
    output = job_output(proc, results)
    why = judge(case_id, proc.returncode, output, expect, artefacts(results))
    assert OUTCOMES[case_id] == "clear", why


def test_downstream_job_names_a_truncated_artefact(files, tmp_path, smollm_dir):
    """A Parquet file in results/ cut short after it was written: the job reading it must name
    the file and say to delete it and rerun, and write no output."""
    results = tmp_path / "results"
    overrides = axbench_overrides(files["ax_good"], results)
    outputs = planned_outputs(overrides)
    examples = Path(next(p for p in outputs if re.search(r"/data/\w+/train\.parquet$", p)))
    weights = Path(next(p for p in outputs if p.endswith("/weights")))
    acts = next(p for p in outputs if re.search(r"/activations/\w+/train\.parquet$", p))
    proc = snakemake(str(examples), overrides=overrides)
    assert proc.returncode == 0, job_output(proc, results)
    examples.write_bytes(examples.read_bytes()[: examples.stat().st_size // 2])
    weights.parent.mkdir(parents=True)  # the prepared test model stands in for its job
    weights.symlink_to(smollm_dir.resolve(), target_is_directory=True)
    before = artefacts(results)
    proc = snakemake(acts, overrides=overrides)
    expect = (
        rf"{re.escape(str(examples))}: not a readable Parquet file",
        r"delete it and rerun the workflow",
    )
    case_id = "job: truncated Parquet in results/"
    output = job_output(proc, results)
    why = judge(case_id, proc.returncode, output, expect, artefacts(results) - before)
    assert OUTCOMES[case_id] == "clear", why


def test_tally_of_malformed_inputs(capsys):
    """Runs last: the count over every case above."""
    tried = len(OUTCOMES)
    clear = sum(o == "clear" for o in OUTCOMES.values())
    crashes = sum(o == "crash" for o in OUTCOMES.values())
    with capsys.disabled():
        print(f"\nmalformed inputs: tried {tried} / clear errors {clear} / crashes {crashes}")
    if tried < len(CASES) + len(SNAKEMAKE_CASES) + 2:
        pytest.skip("a subset of the cases ran (-k): the tally needs them all")
    assert tried >= 40
    assert clear == tried, {k: v for k, v in OUTCOMES.items() if v != "clear"}

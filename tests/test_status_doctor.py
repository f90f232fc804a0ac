"""`axflow status` (Snakemake's own dry runs: no job runs), `axflow doctor` (the real checks on
this machine) and the progress bar a long loop writes to a job's log."""

from __future__ import annotations

import json
import re
import socket

from axflow.cli import main
from axflow.plan import make_sweep
from dag import run_args


def test_status_of_a_fresh_results_dir_runs_every_job_for_its_missing_output(tmp_path, capsys):
    results = tmp_path / "results"
    # Ends with an override the shell must quote: Snakemake strips quotes off a --config value.
    overrides = [*run_args(results), "steering.factors=[0.5,1.0]"]
    # An earlier diffmean steer job at other factors: status names the config key that changed.
    earlier = make_sweep([*overrides, "steering.factors=[0.5,2.0]"])
    for name, slice_ in earlier.slices.items():
        if name.startswith("steer/") and slice_["train"]["method"]["kind"] == "diffmean":
            folder = results / "steer" / "diffmean" / name.partition("/")[2]
            folder.mkdir(parents=True)
            (folder / "config.json").write_text(json.dumps(slice_))

    assert main(["status", *overrides]) == 0
    out = capsys.readouterr().out
    print(out)
    jobs, done, todo = map(int, re.search(r"(\d+) jobs, (\d+) done, (\d+) to run", out).groups())
    assert done == 0 and todo == jobs > 10
    table = re.findall(r"^  (\w+) +(\d+) +(\d+)$", out, re.M)
    assert {"dataset", "extract_activations", "train", "steer", "judge"} <= {r for r, _, _ in table}
    assert all(int(d) == 0 for _, d, _ in table) and sum(int(n) for _, _, n in table) == jobs
    reasons = out.split("To run, and why:\n")[1].splitlines()
    assert len(reasons) == jobs
    assert all(": missing output (" in line for line in reasons)
    (steer,) = [line for line in reasons if line.startswith("  steer method=diffmean")]
    assert "changed config steering.factors)" in steer
    (data,) = [line for line in reasons if line.startswith("  dataset ")]
    assert "the stage never ran here" in data


def test_doctor_passes_on_this_machine_for_the_default_config(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    print(out)
    assert not [line for line in out.splitlines() if line.startswith("FAIL")]
    for check in ("config", "model", "inputs", "vllm", "minilm", "disk results_dir"):
        assert re.search(rf"^OK +{check} ", out, re.M), check


def test_doctor_fails_on_an_unreachable_judge_endpoint(capsys):
    with socket.socket() as s:  # a port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    overrides = ["judge=openai", f"judge.base_url={url}", "steering.engine=hf"]
    assert main(["doctor", *overrides]) == 1
    out = capsys.readouterr().out
    print(out)
    (line,) = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert line.split()[1:3] == ["judge", "endpoint"]
    assert f"{url}/models is unreachable" in line and "judge.base_url" in line
    assert out.splitlines()[-1] == "axflow doctor: 1 failed: judge endpoint"


def test_doctor_fails_on_a_missing_model_folder(tmp_path, capsys):
    missing = tmp_path / "no-model"
    assert main(["doctor", "model.source=path", f"model.path={missing}"]) == 1
    out = capsys.readouterr().out
    print(out)
    (line,) = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert line.split()[1] == "model"
    assert f"config key model.path: {missing} has no config.json" in line
    assert re.search(r"^SKIP +inputs ", out, re.M)


def test_extraction_writes_a_progress_bar_to_stderr(smollm, capfd):
    from axflow.lm.extract import extract_residuals

    pairs = [("Say hello.", "Hello there, friend."), ("Count to three.", "One, two, three.")]
    got = list(extract_residuals(smollm, pairs, layer=3, progress="extract activations"))
    assert len(got) == 2
    err = capfd.readouterr().err
    bar = re.search(r"extract activations: 100%\|[^|]*\| (\d+)/(\d+) \[[^\]]*tok/s\]", err)
    assert bar and bar.group(1) == bar.group(2), err

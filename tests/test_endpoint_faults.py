"""Endpoint faults against a real HTTP server on loopback (tests/fault_server.py).

The server injects each fault kind of issue 16 into the first ask of some prompts: connection
refused while it boots, 500, 503, 429 with Retry-After, read timeouts (a silent server, a body that
stalls), a body that trickles in past the deadline, cut-off JSON, empty `choices`, a reply for
another model, and garbage with no rating. The judge and the synthesis generator must retry what
is transient (with backoff, honouring Retry-After), count every failed attempt by kind, never turn
a failure into a 0 or an example, finish, and on rerun call the server only for what did not
succeed. Calls are counted at the server. Backoffs are tiny (config), so each test takes seconds.
"""

from __future__ import annotations

import ast
import json
import threading
from pathlib import Path

import pytest

from axflow.calls import CallCache
from axflow.data.generators import ChatRequest, OpenAIGenerator
from axflow.judge import JudgeItem, Rating, build_judge
from axflow.layout import report_input
from axflow.lm.openai_compat import EndpointError
from axflow.report import data_section
from endpoint_run import TIMEOUTS, counts_by_kind, endpoint_run
from fault_server import Fault, FaultServer, ok, status

GOOD = "The text is on topic.\nRating: [[2]]"
# Tag (in the generation or request text) -> the fault of a prompt's first ask.
FIRST_ASK = {
    "E500": status(500),
    "E503": status(503),
    "E429": status(429, retry_after="1"),
    "HANG": Fault("hang", GOOD, seconds=2.5),  # silent past the 1 s read timeout
    "STALL": Fault("stall", GOOD, seconds=2.5),  # half the body, then silence
    "SLOW": Fault("slow", GOOD, seconds=0.25),  # 16 bytes per 0.25 s: past the 1 s deadline
    "TRUNC": Fault("truncated", GOOD),
    "EMPTY": Fault("empty_choices", GOOD),
    "WRONG": Fault("wrong_model", GOOD),
    "GARBAGE1": ok("I liked it a lot."),  # no rating; the re-ask gets one
}
FAULT_KINDS = {  # the fault tag -> how the client counts the failed attempt
    "E500": "http_500",
    "E503": "http_503",
    "E429": "http_429",
    "HANG": "timeout",
    "STALL": "timeout",
    "SLOW": "timeout",
    "TRUNC": "invalid_json",
    "EMPTY": "empty_choices",
    "WRONG": "wrong_model",
}


def tag_of(prompt: str) -> str:
    for tag in ("GARBAGE1", "GARBAGE", "DOWN", *FIRST_ASK):
        if f"<{tag}>" in prompt:
            return tag
    return "GOOD"


class Script:
    """The server's behaviour: each tag's fault on the first ask, GARBAGE never rates, DOWN
    answers 503 until `heal()`."""

    def __init__(self) -> None:
        self.healed = threading.Event()

    def heal(self) -> None:
        self.healed.set()

    def __call__(self, prompt: str, nth: int) -> Fault:
        tag = tag_of(prompt)
        if tag == "GARBAGE":
            return ok("What a lovely text. I cannot decide.")
        if tag == "DOWN" and not self.healed.is_set():
            return status(503)
        if nth == 1 and tag in FIRST_ASK:
            return FIRST_ASK[tag]
        return ok(GOOD)


def endpoint_cfg(base_url: str, **over) -> dict:
    return {
        "name": "openai",
        "base_url": base_url,
        "model": "fault-test-model",
        "api_key_env": "AXFLOW_TEST_NO_SUCH_KEY",
        "max_concurrency": 8,
        "transport_retries": 6,
        "backoff_s": 0.02,  # waits 0.02, 0.04, ..., 0.64 s: 1.26 s in all
        "backoff_max_s": 1.5,  # above the 1 s Retry-After, so it is honoured in full
        "timeout_s": 1.0,
        **over,
    }


def judge_items() -> list[JudgeItem]:
    tags = ["GOOD", *FIRST_ASK, "GARBAGE", "DOWN"]
    return [JudgeItem("dates", "Say hi.", f"<{tag}> a reply") for tag in tags]


def calls_by_tag(server: FaultServer) -> dict[str, int]:
    out: dict[str, int] = {}
    for prompt, n in server.seen.items():
        out[tag_of(prompt)] = out.get(tag_of(prompt), 0) + n
    return out


def second_ask_gaps(server: FaultServer, tag: str) -> list[float]:
    """Seconds between the first ask (the fault) and the second, per prompt with `tag`."""
    first: dict[str, float] = {}
    gaps = []
    for prompt, nth, t in server.arrivals:
        if tag_of(prompt) == tag:
            if nth == 1:
                first[prompt] = t
            elif nth == 2:
                gaps.append(t - first[prompt])
    return gaps


def test_judge_survives_every_fault_kind_and_reruns_only_failures(tmp_path: Path) -> None:
    script = Script()
    with FaultServer(script, start=False) as server:
        cache = CallCache(tmp_path / "calls.sqlite")
        judge = build_judge(endpoint_cfg(server.base_url), model_dir=None, cache=cache)
        server.start_when(lambda: judge.stats.faults["connection"] > 0)  # refused until then
        items = judge_items()
        ratings = judge.rate(items)
        by_tag = dict(zip([tag_of(i.generation) for i in items], ratings, strict=True))

        # Survived: every transient fault ended in the real rating.
        for tag in ["GOOD", *FIRST_ASK]:
            assert by_tag[tag] == Rating(2.0, 2.0, 2.0, failures=0), tag
        # Counted, never 0: garbage after all re-asks, and a prompt whose retries ran out.
        for tag in ("GARBAGE", "DOWN"):
            assert by_tag[tag] == Rating(None, None, None, failures=3), tag
            assert by_tag[tag].overall is None
        assert not any(
            0.0 in (r.concept_score, r.instruction_score, r.fluency_score) for r in ratings
        )

        # Retried and counted: each failed attempt by kind, as many as the server injected.
        faults, kinds = judge.stats.faults, server.kinds
        assert kinds["status"] == 3 * 3 + 3 * 7  # E500, E503, E429 once; DOWN on all 7 attempts
        assert faults["http_500"] == faults["http_429"] == 3
        assert faults["http_503"] == 3 + 3 * 7
        for kind in ("truncated", "empty_choices", "wrong_model"):
            assert kinds[kind] == 3
        assert faults["invalid_json"] == faults["empty_choices"] == faults["wrong_model"] == 3
        assert kinds["hang"] == kinds["stall"] == kinds["slow"] == 3
        assert faults["timeout"] >= 9 and faults["connection"] >= 1  # refused while booting
        assert faults["retries"] == sum(faults.values()) - faults["retries"] - 3  # DOWN's last
        assert judge.stats.unparseable == 3 * 3 + 3  # GARBAGE 3 attempts, GARBAGE1 once
        assert judge.stats.failed == 6
        # Calls at the server: GOOD once, a faulted prompt twice, garbage 3x, DOWN 7x, per prompt.
        calls = calls_by_tag(server)
        assert calls == {
            "GOOD": 3,
            **{tag: 6 for tag in FIRST_ASK},
            "GARBAGE": 9,
            "DOWN": 21,
        }
        # Retry-After: 1 s honoured although the backoff alone would wait 0.02-0.04 s.
        gaps = second_ask_gaps(server, "E429")
        assert len(gaps) == 3 and min(gaps) >= 0.95, gaps
        # The trickle (4.75 s to send) was cut at the 1 s deadline of its attempt.
        assert max(second_ask_gaps(server, "SLOW")) < 2.5

        # Rerun once the server is healed: calls only for DOWN's prompts, the rest from the cache.
        script.heal()
        before = dict(calls)
        again = build_judge(
            endpoint_cfg(server.base_url), model_dir=None, cache=CallCache(cache.path)
        )
        rerun = again.rate(items)
        new_calls = {t: n - before.get(t, 0) for t, n in calls_by_tag(server).items()}
        assert {t: n for t, n in new_calls.items() if n} == {"DOWN": 3}
        assert again.stats.calls == 3 and again.stats.failed == 3  # GARBAGE replays its transcript
        assert rerun[-1] == Rating(2.0, 2.0, 2.0, failures=0)
        assert rerun[:-1] == ratings[:-1]


def test_judge_stops_when_the_endpoint_stays_down(tmp_path: Path) -> None:
    script = Script()
    cfg = endpoint_cfg("", transport_retries=2, max_concurrency=2)
    # Never up within the retries: every attempt is refused, and the run stops with the fix.
    with FaultServer(script, start=False) as server:
        judge = build_judge(
            {**cfg, "base_url": server.base_url},
            model_dir=None,
            cache=CallCache(tmp_path / "c.sqlite"),
        )
        with pytest.raises(EndpointError, match=r"still failed after 3 attempts \(connection"):
            judge.rate(judge_items()[:2])
        assert judge.stats.faults["connection"] >= 3 and server.requests == 0
    # Up but answering 503 to everything: it stops after GIVE_UP_AFTER prompts in a row.
    from axflow.judge.openai_judge import GIVE_UP_AFTER

    with FaultServer(lambda p, n: status(503)) as server:
        judge = build_judge(
            {**cfg, "base_url": server.base_url},
            model_dir=None,
            cache=CallCache(tmp_path / "c.sqlite"),
        )
        with pytest.raises(EndpointError, match=f"{GIVE_UP_AFTER} prompts in a row"):
            judge.rate(judge_items())
        assert server.requests < len(judge_items()) * 3 * 3  # the queued prompts were dropped


def test_judge_never_caches_another_models_reply(tmp_path: Path) -> None:
    with FaultServer(lambda p, n: Fault("wrong_model", GOOD)) as server:
        cache = CallCache(tmp_path / "c.sqlite")
        cfg = endpoint_cfg(server.base_url, transport_retries=1)
        judge = build_judge(cfg, model_dir=None, cache=cache)
        with pytest.raises(EndpointError, match="another model than judge.model"):
            judge.rate(judge_items()[:1])
        assert len(cache) == 0 and judge.stats.faults["wrong_model"] >= 2


def generator_requests() -> list[ChatRequest]:
    tags = ["GOOD", *[t for t in FIRST_ASK if t != "GARBAGE1"]]
    return [
        ChatRequest(f"<{t}> Write about dates.", seed=k, max_tokens=8) for k, t in enumerate(tags)
    ]


def test_generator_survives_every_fault_kind_and_reruns_only_failures(tmp_path: Path) -> None:
    script = Script()
    with FaultServer(script, start=False) as server:
        cache = CallCache(tmp_path / "calls.sqlite")
        writer = OpenAIGenerator(endpoint_cfg(server.base_url), cache)
        server.start_when(lambda: writer.faults["connection"] > 0)  # refused until then
        requests = generator_requests()
        texts = writer(requests)
        # Survived: every request got the real reply; no fault became an (empty) example.
        assert texts == [GOOD] * len(requests)
        st = writer.stats
        assert st.calls == len(requests) and st.cached == 0
        for kind in FAULT_KINDS.values():
            assert st.faults.get(kind, 0) >= 1, (kind, st.faults)
        for kind in ("http_500", "http_503", "http_429", "invalid_json", "empty_choices"):
            assert st.faults[kind] == 1, (kind, st.faults)
        assert st.faults["wrong_model"] == 1
        assert st.faults["timeout"] >= 3 and st.faults["connection"] >= 1
        assert st.retries == sum(st.faults.values())  # every failed attempt was retried
        assert calls_by_tag(server) == {"GOOD": 1, **{t: 2 for t in FAULT_KINDS}}
        gaps = second_ask_gaps(server, "E429")
        assert len(gaps) == 1 and gaps[0] >= 0.95, gaps

        # A request that stays down stops the run with the fix; what succeeded is cached.
        down = [
            ChatRequest(f"<DOWN> Write about dates {k}.", seed=k, max_tokens=8) for k in range(2)
        ]
        fresh = [
            ChatRequest(f"<GOOD> Write about figs {k}.", seed=k, max_tokens=8) for k in range(2)
        ]
        with pytest.raises(EndpointError, match="generator.transport_retries"):
            OpenAIGenerator(endpoint_cfg(server.base_url, max_concurrency=1), cache)(fresh + down)
        seen = dict(server.seen)
        assert all(seen[r.user] == 1 for r in fresh) and seen[down[0].user] == 7

        # Rerun after the fault: 0 calls for what succeeded, one each for what did not.
        script.heal()
        replay = OpenAIGenerator(endpoint_cfg(server.base_url), CallCache(cache.path))
        assert replay(requests + fresh + down) == [GOOD] * (len(requests) + 4)
        assert replay.stats.calls == 2 and replay.stats.cached == len(requests) + 2
        assert all(server.seen[r.user] == seen[r.user] for r in requests + fresh)


# -- through the workflow: the data job (Snakemake) and the judge job's entry point --------------


@pytest.fixture(scope="module")
def run(tmp_path_factory, smollm_dir: Path):
    return endpoint_run(tmp_path_factory.getbasetemp() / "endpoint_run", smollm_dir)


@pytest.mark.slow  # a workflow run: make test's second step
def test_workflow_data_job_survives_faults_and_reruns_without_calls(run, tmp_path) -> None:
    writer = run.data_stats["generators"]["writer"]
    faults = writer["faults"]
    expected = counts_by_kind(run.data_injected)
    assert len(run.data_injected) >= 5, run.data_injected  # the run did meet faults
    for kind, n in expected.items():
        assert faults.get(kind, 0) == n, (kind, faults, expected)
    timeouts = sum(f.kind in TIMEOUTS for f in run.data_injected)
    assert faults.get("timeout", 0) >= timeouts
    assert writer["retries"] == sum(faults.values())  # each one retried, none ran out
    assert writer["calls"] == writer["requests"] > 0
    # The report's Data section shows them (from the first run's stats).
    first = tmp_path / "stats.json"
    first.write_text(json.dumps(run.data_stats))
    line = next(
        x for x in data_section({report_input("data_stats", 0): str(first)}) if "writer" in x
    )
    for kind, n in faults.items():
        assert f"{kind} {n}" in line, line
    assert f"{writer['retries']} retries after " in line
    # The forced rerun of the data job: every reply from the call cache, none from the server.
    again = run.data_rerun_stats["generators"]["writer"]
    assert run.data_rerun_calls == 0
    assert again["calls"] == 0 and again["cached"] == again["requests"] == writer["requests"]
    assert again["faults"] == {}


@pytest.mark.slow  # a workflow run: make test's second step
def test_judge_job_counts_failures_never_scores_them_0_and_reruns_only_them(run) -> None:
    rows = {r["concept_id"]: r for r in run.ratings.iter_rows(named=True)}
    for cid in (1, 2):  # <REJECT>: 400; <GARBAGE>: no rating after every re-ask
        r = rows[cid]
        assert r["failures"] == 3 and r["overall"] is None, r
        assert (r["concept_score"], r["instruction_score"], r["fluency_score"]) == (None,) * 3
    for cid in (0, 3):
        r = rows[cid]
        assert r["failures"] == 0 and r["overall"] == 2.0, r
    # The job log counts what it survived, as many of each kind as the server injected.
    line = next(x for x in run.judge_log.splitlines() if "failed attempts by kind" in x)
    logged = ast.literal_eval(line.split("failed attempts by kind: ")[1])
    for kind, n in counts_by_kind(run.judge_injected).items():
        assert logged.get(kind, 0) == n, (kind, logged)
    assert "6 sub-scores failed" in line
    # Rerun: only the rejected prompts reach the server again (they were never answered).
    assert run.judge_rerun_calls == 3

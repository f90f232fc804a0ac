"""AxBench's judge protocol against any OpenAI-compatible chat endpoint (OpenAI, `vllm serve`, ...).

Each generation gets three separate single-turn prompts (concept, instruction, fluency; see
`rubric.py`), sent concurrently (asyncio, at most `max_concurrency` in flight). Transport faults
(connection refused, timeouts, 408/409/429/5xx with Retry-After honoured, cut-off JSON, no
`choices`, a reply for another model) are retried with exponential backoff by
`openai_compat.chat_completion`; a prompt whose retries run out is a counted failure (sub-score
None), never 0. An unparseable reply is asked again up to `max_retries` times and then counts as
a failure too. What stops the run: a refused key or an unknown model, the endpoint staying
unreachable or answering for another model, or `GIVE_UP_AFTER` prompts in a row running out of
retries, since every later call would fail the same way. With `unparseable: zero` (AxBench;
protocol=axbench) the first reply is final and one without a valid rating scores 0, as AxBench's
parser does (no re-ask, no failure counted; a request the endpoint rejects scores 0 too).

Every checked reply is stored in the CallCache under (model, {temperature, max_tokens, attempt},
prompt); failed attempts are not. The attempt number is part of the key, so a rerun replays the
same transcript, re-asks included, with no HTTP calls, while a larger `max_retries` draws fresh
samples only for the new attempts. The key names the model, not the endpoint: a local server
should serve its model under a name that says what it is (`vllm serve ... --served-model-name`).
`stats` counts prompts, cache hits, calls and failed attempts per kind; the job log shows them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from typing import Any

import openai

from axflow.judge import CallCache, JudgeItem, Rating, config_from_dict, register_judge
from axflow.judge.rubric import ASPECTS, judge_prompt, parse_rating
from axflow.lm.openai_compat import (
    EndpointError,
    Faults,
    chat_completion,
    check_no_secrets,
    client_for,
    endpoint_error,
    fault_kind,
    gather_or_cancel,
    redacted,
)
from axflow.progress import progress_bar

log = logging.getLogger(__name__)

# Prompts in a row whose retries ran out before the judge stops: the endpoint is down, not one
# prompt unlucky.
GIVE_UP_AFTER = 8


@dataclass
class OpenAIJudgeConfig:
    """Keys of config/judge/openai.yaml (besides `name`)."""

    base_url: str
    model: str
    temperature: float  # AxBench code (evaluate.py); the paper says 1.0
    max_tokens: int
    api_key_env: str  # unset is fine for local servers
    max_concurrency: int
    max_retries: int  # re-asks after an unparseable reply
    transport_retries: int  # retries of one request after a transient fault
    backoff_s: float  # first wait; doubles per retry up to backoff_max_s
    backoff_max_s: float  # also the longest Retry-After honoured
    timeout_s: float  # deadline of one attempt, however slowly its reply trickles in
    unparseable: str  # fail: re-ask, then a counted failure; zero: score 0 (AxBench)

    def __post_init__(self) -> None:
        if self.unparseable not in UNPARSEABLE:
            raise ValueError(
                f"judge.unparseable={self.unparseable!r}; use one of {list(UNPARSEABLE)}"
            )
        if self.max_concurrency < 1:
            raise ValueError(f"judge.max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.max_retries < 0 or self.transport_retries < 0:
            raise ValueError("judge.max_retries and judge.transport_retries must be >= 0")


UNPARSEABLE = ("fail", "zero")

# Kept under the judge's name for callers that catch it.
JudgeEndpointError = EndpointError


@dataclass
class JudgeStats:
    """What the judge did in this run: prompts, cache hits, calls, failures and faults."""

    prompts: int = 0
    cached: int = 0
    calls: int = 0
    unparseable: int = 0  # replies without a valid rating
    failed: int = 0  # sub-scores not obtained (None)
    faults: Faults | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "faults": (self.faults or Faults()).as_dict()}


@register_judge("openai")
class OpenAIJudge:
    """LLM judge over an OpenAI-compatible endpoint; `model_dir` is not used."""

    name = "openai"

    def __init__(
        self, cfg: dict[str, Any], *, model_dir: str | None = None, cache: CallCache
    ) -> None:
        check_no_secrets(cfg, "judge")
        self.cfg: OpenAIJudgeConfig = config_from_dict(OpenAIJudgeConfig, cfg, "openai")
        self.cache = cache
        self.stats = JudgeStats(faults=Faults())
        self._spent_in_a_row = 0

    def describe(self) -> dict[str, Any]:
        """The resolved configuration, for results provenance (no secrets)."""
        return {"name": self.name, **asdict(self.cfg)}

    def rate(self, items: list[JudgeItem]) -> list[Rating]:
        """One Rating per item; a sub-score that could not be obtained is None and counts a
        failure."""
        scores = asyncio.run(self._rate(items))
        ratings = []
        for k in range(len(items)):
            c, i, f = scores[3 * k : 3 * k + 3]
            ratings.append(
                Rating(
                    concept_score=c,
                    instruction_score=i,
                    fluency_score=f,
                    perplexity=None,
                    failures=sum(s is None for s in (c, i, f)),
                )
            )
        st = self.stats
        log.info(
            "judge %s: %d prompts, %d replies from the call cache, %d calls, %d unparseable "
            "replies, %d sub-scores failed; failed attempts by kind: %s",
            self.cfg.model,
            st.prompts,
            st.cached,
            st.calls,
            st.unparseable,
            st.failed,
            st.as_dict()["faults"] or "none",
        )
        return ratings

    async def _rate(self, items: list[JudgeItem]) -> list[float | None]:
        client = client_for(self.cfg)
        gate = asyncio.Semaphore(self.cfg.max_concurrency)
        bar = progress_bar(len(items) * len(ASPECTS), "judge", "prompt")

        async def counted(item: JudgeItem, aspect: str) -> float | None:
            try:
                return await self._score(client, gate, item, aspect)
            finally:
                bar.update()

        try:
            return await gather_or_cancel(
                counted(item, aspect) for item in items for aspect in ASPECTS
            )
        finally:
            bar.close()
            await client.close()

    async def _score(self, client, gate, item: JudgeItem, aspect: str) -> float | None:
        prompt = judge_prompt(
            aspect, concept=item.concept, instruction=item.instruction, generation=item.generation
        )
        self.stats.prompts += 1
        zero = self.cfg.unparseable == "zero"
        attempts = 1 if zero else self.cfg.max_retries + 1
        for attempt in range(attempts):
            params = {
                "temperature": self.cfg.temperature,
                "max_tokens": self.cfg.max_tokens,
                "attempt": attempt,
            }
            reply = self.cache.get(self.cfg.model, params, prompt)
            if reply is not None:
                self.stats.cached += 1
            else:
                try:
                    async with gate:
                        reply = await self._complete(client, prompt)
                except Unanswered as err:  # a failure; AxBench scores a rejected request 0
                    if zero and err.rejected:
                        return 0.0
                    self.stats.failed += 1
                    return None
                self.cache.put(self.cfg.model, params, prompt, reply)
            score = parse_rating(reply)
            if score is not None:
                return score
            self.stats.unparseable += 1
        if zero:
            log.warning(
                "judge %s gave no valid rating for the %s prompt; scored 0 (unparseable=zero); "
                "reply ends with %r",
                self.cfg.model,
                aspect,
                reply[-120:],
            )
            return 0.0
        self.stats.failed += 1
        log.warning(
            "judge %s gave no valid rating for the %s prompt after %d attempts; last reply "
            "ends with %r",
            self.cfg.model,
            aspect,
            self.cfg.max_retries + 1,
            reply[-120:],
        )
        return None

    async def _complete(self, client: openai.AsyncOpenAI, prompt: str) -> str:
        """The reply text; raises Unanswered when this one prompt got none, EndpointError when no
        prompt will."""
        cfg = self.cfg
        try:
            reply = await chat_completion(
                client,
                cfg,
                self.stats.faults,
                prompt,
                temperature=cfg.temperature,
                max_tokens=cfg.max_tokens,
            )
        except Exception as err:
            fatal = endpoint_error(
                err,
                group="judge",
                base_url=cfg.base_url,
                model=cfg.model,
                api_key_env=cfg.api_key_env,
                attempts=cfg.transport_retries + 1,
            )
            if isinstance(err, openai.APIStatusError) and fatal is None:
                log.warning(
                    "judge request rejected (%s): %s",
                    err.status_code,
                    redacted(err, cfg.api_key_env),
                )
                raise Unanswered(rejected=True) from err
            if fatal is None:
                raise
            self._spent_in_a_row += 1
            unreachable = fault_kind(err) in ("connection", "wrong_model")
            auth = isinstance(err, openai.AuthenticationError | openai.PermissionDeniedError)
            if unreachable or auth or isinstance(err, openai.NotFoundError):
                raise fatal from None  # the body may echo the key: not in the job's log
            if self._spent_in_a_row >= GIVE_UP_AFTER:
                raise EndpointError(
                    f"{fatal} {GIVE_UP_AFTER} prompts in a row ran out of retries."
                ) from None
            log.warning(
                "judge %s: a prompt ran out of retries (%s); its sub-score is a counted failure",
                cfg.model,
                fault_kind(err),
            )
            raise Unanswered(rejected=False) from None
        self._spent_in_a_row = 0
        self.stats.calls += 1
        return reply.text


class Unanswered(Exception):
    """A prompt got no reply: the endpoint rejected it (`rejected`) or its retries ran out."""

    def __init__(self, *, rejected: bool) -> None:
        super().__init__("rejected" if rejected else "retries spent")
        self.rejected = rejected

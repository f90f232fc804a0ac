"""AxBench's judge protocol against any OpenAI-compatible chat endpoint (OpenAI, `vllm serve`, ...).

Each generation gets three separate single-turn prompts (concept, instruction, fluency; see
`rubric.py`). Transient transport errors (connection, timeout, 408/409/429/5xx) are retried with
exponential backoff; an unparseable reply is asked again up to `max_retries` times and then counts
as a failure (sub-score None). Authentication and not-found errors, and transient errors that
outlast the retries, stop the run with a message naming the endpoint, since every later call would
fail the same way. With `unparseable: zero` (AxBench; protocol=axbench) the first reply is final
and one without a valid rating scores 0, as AxBench's parser does (no re-ask, no failure counted;
a request the endpoint rejects scores 0 too).

Every reply is stored in the CallCache under (model, {temperature, max_tokens, attempt}, prompt).
The attempt number is part of the key, so a rerun replays the same transcript, re-asks included,
with no HTTP calls, while a larger `max_retries` draws fresh samples only for the new attempts.
The key names the model, not the endpoint: a local server should serve its model under a name that
says what it is (`vllm serve ... --served-model-name`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import openai
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from axflow.judge import CallCache, JudgeItem, Rating, config_from_dict, register_judge
from axflow.judge.rubric import ASPECTS, judge_prompt, parse_rating
from axflow.lm.openai_compat import EndpointError, api_key, endpoint_error, is_transient

log = logging.getLogger(__name__)


@dataclass
class OpenAIJudgeConfig:
    """Keys of config/judge/openai.yaml (besides `name`)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "gpt-4o-mini"
    temperature: float = 0.7  # AxBench code (evaluate.py); the paper says 1.0
    max_tokens: int = 512
    api_key_env: str = "OPENAI_API_KEY"  # unset is fine for local servers
    max_concurrency: int = 16
    max_retries: int = 2  # re-asks after an unparseable reply
    transport_retries: int = 6  # retries of one request after a transient error
    backoff_s: float = 1.0  # first wait; doubles per retry up to backoff_max_s
    backoff_max_s: float = 60.0
    timeout_s: float = 120.0
    unparseable: str = "fail"  # fail: re-ask, then a counted failure; zero: score 0 (AxBench)

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


@register_judge("openai")
class OpenAIJudge:
    """LLM judge over an OpenAI-compatible endpoint; `model_dir` is not used."""

    name = "openai"

    def __init__(
        self, cfg: dict[str, Any], *, model_dir: str | None = None, cache: CallCache
    ) -> None:
        self.cfg: OpenAIJudgeConfig = config_from_dict(OpenAIJudgeConfig, cfg, "openai")
        self.cache = cache
        self._client = openai.OpenAI(
            base_url=self.cfg.base_url,
            api_key=api_key(self.cfg.api_key_env),
            timeout=self.cfg.timeout_s,
            max_retries=0,  # tenacity below owns retries
        )

    def describe(self) -> dict[str, Any]:
        """The resolved configuration, for results provenance (no secrets)."""
        return {"name": self.name, **asdict(self.cfg)}

    def rate(self, items: list[JudgeItem]) -> list[Rating]:
        """One Rating per item; a sub-score that stays unparseable is None and counts a failure."""
        tasks = [(k, aspect) for k in range(len(items)) for aspect in ASPECTS]
        scores: dict[tuple[int, str], float | None] = {}
        pool = ThreadPoolExecutor(max_workers=self.cfg.max_concurrency)
        try:
            futures = {
                pool.submit(self._score, items[k], aspect): (k, aspect) for k, aspect in tasks
            }
            for future, task in futures.items():
                scores[task] = future.result()
        finally:
            # On an endpoint error, drop the queued calls instead of failing each in turn.
            pool.shutdown(wait=True, cancel_futures=True)
        ratings = []
        for k in range(len(items)):
            c, i, f = (scores[(k, aspect)] for aspect in ASPECTS)
            ratings.append(
                Rating(
                    concept_score=c,
                    instruction_score=i,
                    fluency_score=f,
                    perplexity=None,
                    failures=sum(s is None for s in (c, i, f)),
                )
            )
        return ratings

    def _score(self, item: JudgeItem, aspect: str) -> float | None:
        prompt = judge_prompt(
            aspect, concept=item.concept, instruction=item.instruction, generation=item.generation
        )
        zero = self.cfg.unparseable == "zero"
        attempts = 1 if zero else self.cfg.max_retries + 1
        for attempt in range(attempts):
            params = {
                "temperature": self.cfg.temperature,
                "max_tokens": self.cfg.max_tokens,
                "attempt": attempt,
            }
            reply = self.cache.get(self.cfg.model, params, prompt)
            if reply is None:
                reply = self._complete(prompt)
                if reply is None:
                    return 0.0 if zero else None
                self.cache.put(self.cfg.model, params, prompt, reply)
            score = parse_rating(reply)
            if score is not None:
                return score
        if zero:
            log.warning(
                "judge %s gave no valid rating for the %s prompt; scored 0 (unparseable=zero); "
                "reply ends with %r",
                self.cfg.model,
                aspect,
                reply[-120:],
            )
            return 0.0
        log.warning(
            "judge %s gave no valid rating for the %s prompt after %d attempts; last reply "
            "ends with %r",
            self.cfg.model,
            aspect,
            self.cfg.max_retries + 1,
            reply[-120:],
        )
        return None

    def _complete(self, prompt: str) -> str | None:
        """The reply text, or None if the endpoint rejects this one request (e.g. too long)."""
        retrying = Retrying(
            stop=stop_after_attempt(self.cfg.transport_retries + 1),
            wait=wait_exponential(multiplier=self.cfg.backoff_s, max=self.cfg.backoff_max_s),
            retry=retry_if_exception(is_transient),
            reraise=True,
        )
        try:
            response = retrying(
                self._client.chat.completions.create,
                model=self.cfg.model,
                messages=[{"role": "user", "content": prompt}],
                temperature=self.cfg.temperature,
                max_tokens=self.cfg.max_tokens,
            )
        except Exception as err:
            fatal = endpoint_error(
                err,
                group="judge",
                base_url=self.cfg.base_url,
                model=self.cfg.model,
                api_key_env=self.cfg.api_key_env,
                attempts=self.cfg.transport_retries + 1,
            )
            if fatal is not None:
                raise fatal from err
            if isinstance(err, openai.APIStatusError):
                log.warning("judge request rejected (%s): %s", err.status_code, err)
                return None
            raise
        if not response.choices:
            return ""
        return response.choices[0].message.content or ""

"""What the judge and the synthesis generator share about OpenAI-compatible endpoints.

One chat call (`chat_completion`) that survives what endpoints do under load: connection refused
while a server boots, 408/409/429/5xx, read timeouts, a body that trickles in (each attempt has a
total deadline, `timeout_s`, not only one per read), and a 200 that is not a usable completion
(JSON cut short, no `choices`, a reply naming another model; `BadReply`). These are retried with
exponential backoff (tenacity), honouring the server's Retry-After up to `backoff_max_s`, and
every failed attempt is counted by kind in `Faults`, so a run reports what it survived.

A bad reply is never returned: the caller's cache stores only checked replies, so a rerun makes
calls only for what did not succeed. Keys come from the environment only (`axflow.secrets`), and
error messages mask them.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base, wait_exponential

from axflow.secrets import api_key, check_no_secrets, redacted

__all__ = ["api_key", "check_no_secrets", "redacted"]  # re-exported: callers import them here


class EndpointError(RuntimeError):
    """The endpoint cannot serve this run (unreachable, unauthorised, unknown model)."""


class BadReply(Exception):
    """A 200 answer that is not a usable chat completion; `kind` names what was wrong."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Reply:
    """A checked completion: its text and the token counts the endpoint reported."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Faults(Counter):
    """Failed attempts per kind (connection, timeout, http_503, invalid_json, empty_choices,
    wrong_model, ...), plus `retries`: how many of them were followed by another attempt."""

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.items()))


def fault_kind(err: BaseException) -> str:
    """A short name for what went wrong with one attempt, as counted in `Faults`."""
    if isinstance(err, BadReply):
        return err.kind
    if isinstance(err, openai.APITimeoutError | TimeoutError):
        return "timeout"
    if isinstance(err, openai.APIConnectionError):
        return "connection"
    if isinstance(err, openai.APIStatusError):
        return f"http_{err.status_code}"
    return type(err).__name__


def is_transient(err: BaseException) -> bool:
    """Connection errors, timeouts, 408/409/429, 5xx and bad replies: worth another try."""
    if isinstance(err, BadReply | TimeoutError | openai.APIConnectionError):  # incl. timeouts
        return True
    if isinstance(err, openai.APIStatusError):
        return err.status_code in (408, 409, 429) or err.status_code >= 500
    return False


def retry_after_s(err: BaseException) -> float | None:
    """The wait a 429/503 asked for (Retry-After as seconds or an HTTP date, or retry-after-ms)."""
    response = getattr(err, "response", None)
    if not isinstance(err, openai.APIStatusError) or response is None:
        return None
    headers = response.headers
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers[name]) * scale)
        except (KeyError, TypeError, ValueError):
            pass
    when = email.utils.parsedate_tz(headers.get("retry-after") or "")
    return None if when is None else max(0.0, email.utils.mktime_tz(when) - time.time())


class wait_retry_after(wait_base):  # noqa: N801 - tenacity's naming of waits
    """Exponential backoff, or the server's Retry-After when it asks for longer; capped."""

    def __init__(self, backoff_s: float, backoff_max_s: float) -> None:
        self.exponential = wait_exponential(multiplier=backoff_s, max=backoff_max_s)
        self.max_s = backoff_max_s

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = self.exponential(retry_state)
        err = retry_state.outcome.exception() if retry_state.outcome else None
        asked = retry_after_s(err) if err is not None else None
        return wait if asked is None else min(max(wait, asked), self.max_s)


def same_model(asked: str, answered: str | None) -> bool:
    """A reply is for the model asked when it names it, or a dated snapshot of it (OpenAI
    answers `gpt-4o-mini` with `gpt-4o-mini-2024-07-18`); servers that name none pass."""
    if not answered:
        return True
    a, b = asked.lower(), answered.lower()
    return a == b or b.startswith(a + "-")


def check_reply(response: Any, model: str) -> Reply:
    """The completion's text and usage, or BadReply when it is no completion of `model`."""
    if isinstance(response, str):  # the client returns a body it could not read as JSON as text
        raise BadReply("invalid_json", f"the reply is not JSON: {response[:80]!r}")
    answered = getattr(response, "model", None)
    if not same_model(model, answered):
        raise BadReply("wrong_model", f"the reply is from model {answered!r}, not {model!r}")
    choices = getattr(response, "choices", None)
    if not choices:
        raise BadReply("empty_choices", "the reply has no choices")
    usage = getattr(response, "usage", None)
    return Reply(
        choices[0].message.content or "",
        prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
        completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
    )


async def chat_completion(
    client: openai.AsyncOpenAI, cfg: Any, faults: Faults, user: str, **body: Any
) -> Reply:
    """One checked single-turn completion of `cfg.model`, transient faults retried.

    `cfg` has model, transport_retries, backoff_s, backoff_max_s and timeout_s (the deadline of
    one attempt). Raises the last error once retries are spent, or at once if it is not
    transient.
    """

    def count_retry(_state: RetryCallState) -> None:
        faults["retries"] += 1

    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(cfg.transport_retries + 1),
        wait=wait_retry_after(cfg.backoff_s, cfg.backoff_max_s),
        retry=retry_if_exception(is_transient),
        before_sleep=count_retry,
        reraise=True,
    ):
        with attempt:
            try:
                async with asyncio.timeout(cfg.timeout_s):
                    try:
                        response = await client.chat.completions.create(
                            model=cfg.model,
                            messages=[{"role": "user", "content": user}],
                            **body,
                        )
                    except (json.JSONDecodeError, UnicodeDecodeError) as err:
                        raise BadReply("invalid_json", f"cut-off JSON ({err})") from err
                return check_reply(response, cfg.model)
            except Exception as err:
                faults[fault_kind(err)] += 1
                raise
    raise AssertionError("unreachable: tenacity reraises the last error")


def client_for(cfg: Any) -> openai.AsyncOpenAI:
    """An async client for `cfg.base_url`, its key from `$cfg.api_key_env`; retries are ours."""
    return openai.AsyncOpenAI(
        base_url=cfg.base_url,
        api_key=api_key(cfg.api_key_env),
        timeout=cfg.timeout_s,
        max_retries=0,
    )


async def gather_or_cancel(coros) -> list:
    """Every result in order; when one call raises (an endpoint-wide error), the queued calls
    are cancelled and awaited before the error propagates, so none outlives the client."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def endpoint_error(
    err: BaseException, *, group: str, base_url: str, model: str, api_key_env: str, attempts: int
) -> EndpointError | None:
    """An EndpointError for failures that every later call would share, else None.

    `group` is the config group ("judge", "generator") whose keys the message tells the user to
    fix. Messages mask the key, which a server may echo in an error body.
    """
    if isinstance(err, openai.AuthenticationError | openai.PermissionDeniedError):
        return EndpointError(
            f"the {group} endpoint {base_url} refused the key from ${api_key_env} "
            f"({err.status_code}); export a valid key in that variable or set "
            f"{group}.api_key_env"
        )
    if isinstance(err, openai.NotFoundError):
        return EndpointError(
            f"the {group} endpoint {base_url} answered 404 for model {model!r}; check "
            f"{group}.base_url (it usually ends in /v1) and that the server serves that model name"
        )
    if isinstance(err, BadReply) and err.kind == "wrong_model":
        return EndpointError(
            f"the {group} endpoint {base_url} answered {attempts} times for another model than "
            f"{group}.model={model!r} ({redacted(err, api_key_env)}); point {group}.base_url "
            "at a server of that model, or serve it under that name (vllm serve "
            "--served-model-name). Replies are cached under the model name, so another model's "
            "must not be stored."
        )
    if is_transient(err):
        return EndpointError(
            f"the {group} endpoint {base_url} still failed after {attempts} attempts "
            f"({fault_kind(err)}: {redacted(err, api_key_env)}); check that the server is up, "
            f"or raise {group}.transport_retries / {group}.timeout_s. Replies received so far "
            "are cached, so a rerun resumes where this stopped."
        )
    return None

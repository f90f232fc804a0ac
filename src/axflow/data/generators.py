"""Text generators for synthesis: the in-process target model, or any OpenAI-compatible endpoint.

Both take plain user messages and go through the persistent call cache, keyed by model, sampling
parameters (temperature, max_tokens, seed) and message, so a rerun or an added concept only
generates what is new; the first answer stored for a key wins. `GeneratorStats` counts requests,
cache hits, calls that reached the model, tokens, retries and cost, for the run's report.

The OpenAI-compatible generator sends its calls concurrently (asyncio, at most `max_concurrency`
in flight) through `openai_compat.chat_completion`: transient faults (connection refused,
timeouts, 429 with Retry-After, 5xx, cut-off JSON, no `choices`, a reply for another model) are
retried with exponential backoff and counted by kind in `stats.faults`, and only checked replies
are stored, each as it arrives, so an interrupted run resumes where it stopped and a bad reply
never becomes an example. A request whose retries run out, and endpoint-wide failures (bad key,
unknown model), stop the run with a message saying what to fix: a dataset missing an example
would be short.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from axflow.calls import CallCache
from axflow.defaults import build_config, option_defaults
from axflow.lm.openai_compat import (
    Faults,
    chat_completion,
    check_no_secrets,
    client_for,
    endpoint_error,
    gather_or_cancel,
    redacted,
)
from axflow.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatRequest:
    """One single-turn chat request; `temperature` None means the generator's own."""

    user: str
    seed: int
    max_tokens: int
    temperature: float | None = None


@dataclass
class GeneratorStats:
    """What a generator did in this run; tokens and cost count calls that reached the model."""

    model: str = ""
    requests: int = 0
    cached: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    faults: dict[str, int] = field(default_factory=dict)  # failed attempts by kind (retried)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Reply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class CachedGenerator:
    """Cache lookup and accounting around a backend's `_generate` of the misses."""

    model_id: str
    temperature: float

    def __init__(self, cache: CallCache) -> None:
        self.cache = cache
        self.stats = GeneratorStats(model=self.model_id)

    def params(self, r: ChatRequest) -> dict[str, Any]:
        t = self.temperature if r.temperature is None else r.temperature
        return {"temperature": float(t), "max_tokens": int(r.max_tokens), "seed": int(r.seed)}

    def __call__(self, requests: list[ChatRequest]) -> list[str]:
        t0 = time.perf_counter()
        keyed = [(self.params(r), r.user) for r in requests]
        out = [self.cache.get(self.model_id, params, user) for params, user in keyed]
        todo = [i for i, o in enumerate(out) if o is None]
        self.stats.requests += len(requests)
        self.stats.cached += len(requests) - len(todo)
        if todo:
            replies = self._generate([requests[i] for i in todo], [keyed[i][0] for i in todo])
            for i, reply in zip(todo, replies, strict=True):
                out[i] = reply.text
                self.stats.calls += 1
                self.stats.prompt_tokens += reply.prompt_tokens
                self.stats.completion_tokens += reply.completion_tokens
        self.stats.seconds += time.perf_counter() - t0
        return out  # type: ignore[return-value]

    def _generate(self, requests: list[ChatRequest], params: list[dict]) -> list[_Reply]:
        raise NotImplementedError


def target_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """The in-process target's keys: config/generator/target.yaml under the writer's config (an
    endpoint writer's config sets the engine and batch of its shared negatives)."""
    return {**option_defaults("generator", "target"), **cfg}


class TargetGenerator(CachedGenerator):
    """The target model itself, in process (chat template applied, per-request seeds).

    `lm` is the loaded HF model (the `lm.generate` loop, `batch_size` at a time) or an unstarted
    `VLLMEngine` (all of a call's misses in one `generate`, scheduled by vLLM), which starts on
    the first call that misses the cache. The engines sample differently from the same seed, so
    the vLLM engine's answers are cached under `<model_id>@vllm`: switching never mixes them.
    """

    def __init__(self, lm, model_id: str, cfg: dict[str, Any], cache: CallCache) -> None:
        from axflow.lm.vllm_engine import VLLMEngine  # imports no vLLM

        cfg = target_options(cfg)
        self.lm = lm
        self.vllm = isinstance(lm, VLLMEngine)
        self.model_id = f"{model_id}@vllm" if self.vllm else model_id
        self.temperature = float(cfg["temperature"])
        self.batch_size = int(cfg["batch_size"])
        self.max_model_len = int(cfg["max_model_len"])
        super().__init__(cache)

    def _generate(self, requests: list[ChatRequest], params: list[dict]) -> list[_Reply]:
        from axflow.lm.generate import GenerationRequest, generate
        from axflow.lm.prompts import format_prompt

        tok = self.lm.tokenizer
        prompts = [format_prompt(tok, r.user, self.lm.chat) for r in requests]
        replies: list[_Reply | None] = [None] * len(requests)
        groups: dict[tuple[float, int], list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault((p["temperature"], p["max_tokens"]), []).append(i)
        if self.vllm:
            self.lm.start(self.max_model_len)  # a no-op once started
        for (temperature, max_tokens), idx in groups.items():
            batch = [GenerationRequest(prompts[i], seed=params[i]["seed"]) for i in idx]
            options = {"layer": None, "max_new_tokens": max_tokens, "temperature": temperature}
            if self.vllm:
                texts = self.lm.generate(batch, **options)
            else:
                texts = generate(self.lm, batch, batch_size=self.batch_size, **options)
            for i, text in zip(idx, texts, strict=True):
                self.cache.put(self.model_id, params[i], requests[i].user, text)
                replies[i] = _Reply(
                    text,
                    prompt_tokens=len(tok(prompts[i], add_special_tokens=False)["input_ids"]),
                    completion_tokens=len(tok(text, add_special_tokens=False)["input_ids"]),
                )
        return replies  # type: ignore[return-value]


@dataclass
class OpenAIGeneratorConfig:
    """Keys of config/generator/openai.yaml (besides `name`)."""

    base_url: str
    model: str
    temperature: float  # AxBench synthesis
    api_key_env: str
    max_concurrency: int
    transport_retries: int
    backoff_s: float
    backoff_max_s: float
    timeout_s: float
    # USD per million tokens, for the report's cost line (gpt-4o-mini's list price by default).
    price_input_per_mtok: float
    price_output_per_mtok: float
    # Ask for this many times the target-token budget: the endpoint's tokenizer is not the
    # target's, and responses are cut to `dataset.response_tokens` target tokens afterwards.
    overgenerate: float
    extra: dict[str, Any]  # extra request-body fields

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(f"generator.max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.transport_retries < 0:
            raise ValueError("generator.transport_retries must be >= 0")


class OpenAIGenerator(CachedGenerator):
    """Chat completions from an OpenAI-compatible endpoint (OpenAI, `vllm serve`, ...)."""

    def __init__(self, cfg: dict[str, Any], cache: CallCache) -> None:
        check_no_secrets(cfg, "generator")
        self.cfg: OpenAIGeneratorConfig = build_config(
            OpenAIGeneratorConfig,
            cfg,
            group="generator",
            option=cfg.get("name", "openai"),
            accept={"name"},
        )
        self.model_id = self.cfg.model
        self.temperature = self.cfg.temperature
        self.faults = Faults()
        super().__init__(cache)

    def _generate(self, requests: list[ChatRequest], params: list[dict]) -> list[_Reply]:
        return asyncio.run(self._generate_all(requests, params))

    async def _generate_all(self, requests, params) -> list[_Reply]:
        client = client_for(self.cfg)
        gate = asyncio.Semaphore(self.cfg.max_concurrency)
        try:
            return await gather_or_cancel(
                self._one(client, gate, r, p) for r, p in zip(requests, params, strict=True)
            )
        finally:
            await client.close()
            self.stats.retries = self.faults["retries"]
            self.stats.faults = {k: v for k, v in self.faults.as_dict().items() if k != "retries"}

    async def _one(self, client, gate, request: ChatRequest, params: dict) -> _Reply:
        cfg = self.cfg
        async with gate:
            try:
                reply = await chat_completion(
                    client,
                    cfg,
                    self.faults,
                    request.user,
                    temperature=params["temperature"],
                    max_tokens=params["max_tokens"],
                    seed=params["seed"],
                    extra_body=cfg.extra or None,
                )
            except Exception as err:
                fatal = endpoint_error(
                    err,
                    group="generator",
                    base_url=cfg.base_url,
                    model=cfg.model,
                    api_key_env=cfg.api_key_env,
                    attempts=cfg.transport_retries + 1,
                )
                if fatal is not None:
                    raise fatal from None  # the error body may echo the key: not in the log
                raise GenerationError(
                    f"the generator endpoint {cfg.base_url} rejected a request "
                    f"({redacted(err, cfg.api_key_env)}); the message began "
                    f"{request.user[:80]!r}. Lower dataset.response_tokens or use a model with a "
                    "longer context."
                ) from None
        self.cache.put(self.model_id, params, request.user, reply.text)
        self.stats.cost_usd += (
            reply.prompt_tokens * cfg.price_input_per_mtok
            + reply.completion_tokens * cfg.price_output_per_mtok
        ) / 1e6
        return _Reply(reply.text, reply.prompt_tokens, reply.completion_tokens)


class GenerationError(RuntimeError):
    """One request was rejected by the endpoint (e.g. too long); the dataset would be short."""


# Writer name -> factory(cfg, target=, cache=). vllm_server arrives here as openai
# (axflow.lm.vllm_server.served has started the server and pointed the config at it).
GENERATORS: Registry[Callable[..., CachedGenerator]] = Registry(
    "generator",
    fix="Set generator=<name> (config/generator/); generator=vllm_server runs the openai writer.",
)


@GENERATORS.register("target")
def _target(cfg: dict[str, Any], *, target: TargetGenerator, cache: CallCache) -> CachedGenerator:
    return target


@GENERATORS.register("openai")
def _openai(cfg: dict[str, Any], *, target: TargetGenerator, cache: CallCache) -> CachedGenerator:
    # batch_size and engine are the in-process target's (its shared negatives), not this writer's.
    body = {k: v for k, v in cfg.items() if k not in ("batch_size", "engine")}
    return OpenAIGenerator(body, cache)


def build_generator(cfg: dict[str, Any], *, target: TargetGenerator, cache: CallCache):
    """The synthesis writer named by `cfg["name"]`: the target itself or an endpoint."""
    return GENERATORS.get(cfg.get("name"))(cfg, target=target, cache=cache)


def overgenerate(cfg: dict[str, Any]) -> float:
    """How many times the target-token budget to ask a writer for (1 for the target itself)."""
    if cfg.get("name") == "target":
        return 1.0
    return float({**option_defaults("generator", cfg["name"]), **cfg}["overgenerate"])

"""What produces the tokens behind the node server's HTTP layer.

An engine turns a validated :class:`Generation` into text pieces, one per
token, through the async generator :meth:`Engine.generate`, and fills in the
generation's counters as it goes, so the HTTP layer can report exact usage
however the request ends (finished, cut by a stop string, or abandoned by the
client). Engines fail only with :class:`ApiError` or :class:`DropConnection`;
an ApiError raised before the first piece reaches the client as its HTTP
status, because the HTTP layer waits for that piece before it commits to a
200 stream (after it, the stream is cut without ``[DONE]``).

* :class:`SimulatorEngine` makes synthetic words with settable latency and
  injected failures: a real upstream process for tests and benchmarks.
* :class:`LlamaEngine` runs a GGUF model with llama.cpp, one generation at a
  time in a worker thread, and counts tokens exactly; it can also serve an
  embedding model (``embedders.py``).
"""
from __future__ import annotations

import asyncio
import codecs
import dataclasses
import logging
import os
import random
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from . import png, tokens
from .embedders import EmbedError, Embedder

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)

# A control endpoint: the request's JSON object in ({} when there is none), the response's out.
Control = Callable[[dict[str, Any]], dict[str, Any]]


class ApiError(Exception):
    """A failure the client sees as an OpenAI error envelope with this status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type, code
        self.headers = dict(headers or {})


class DropConnection(Exception):
    """Close the client's connection without finishing the response (simulated node crash)."""


@dataclass(frozen=True)
class ToolCall:
    """The function an answer calls; its pieces are the JSON arguments."""

    id: str
    name: str

    def head(self) -> dict[str, str]:
        return {"id": self.id, "type": "function"}


@dataclass(eq=False)
class Generation:
    """One completion request as the engines see it, and what came of it.

    ``messages`` (chat) or ``prompt`` (text completion) is set. A message is
    ``{"role", "content"}`` with its text parts joined into ``content``, plus
    ``media`` (the modalities of its image/audio parts, in order),
    ``tool_calls`` and ``tool_call_id`` when it has them. ``tool_choice`` is
    "none", "auto" or "required" (with ``forced_tool`` when the request named
    the function). The engine updates the counters while it works, and sets
    ``tool_call`` before its first piece if the answer is a call.
    """

    id: str
    model: str
    stream: bool
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str = "none"
    forced_tool: str | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    stop_sequence: str | None = None  # the stop string that ended the answer, if one did
    injected_failure: bool = False
    tool_call: ToolCall | None = None


@dataclass
class Stats:
    """Counters over requests that reached an engine: completions, and embeddings (no output tokens).

    Validation errors are not counted; ``last`` is the most recent first.
    """

    requests: int = 0
    completed: int = 0
    cancelled: int = 0  # the client went away before the answer ended
    failed: int = 0
    failed_injected: int = 0
    active: int = 0
    tokens_generated: int = 0
    images_generated: int = 0
    attestations: int = 0  # evidence sent (POST /v1/attestation); not requests
    last: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=50))

    def started(self) -> None:
        self.requests += 1
        self.active += 1

    def finished(self, gen: Generation, outcome: str) -> None:
        self.active -= 1
        if outcome == "completed":
            self.completed += 1
        elif outcome == "cancelled":
            self.cancelled += 1
        else:
            self.failed += 1
            self.failed_injected += gen.injected_failure
        self.tokens_generated += gen.completion_tokens
        self.last.append(
            {
                "id": gen.id,
                "model": gen.model,
                "stream": gen.stream,
                "prompt_tokens": gen.prompt_tokens,
                "completion_tokens": gen.completion_tokens,
                "outcome": outcome,
            }
        )

    def reset(self) -> None:
        """Zero the history; ``active`` stays, it counts requests still in flight."""
        self.requests = self.completed = self.cancelled = self.failed = self.failed_injected = 0
        self.tokens_generated = self.images_generated = self.attestations = 0
        self.last.clear()

    def snapshot(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["last"] = list(reversed(self.last))  # most recent first
        return data


class StopScanner:
    """Cuts streamed text at the first stop string, holding back only what may start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.matched: str | None = None  # the stop string that was hit

    def feed(self, text: str) -> tuple[str, bool]:
        """Return the text that is safe to send now, and whether a stop string was hit."""
        if not self.stops:
            return text, False
        buffer = self.pending + text
        hits = [(i, s) for s in self.stops if (i := buffer.find(s)) >= 0]
        if hits:
            self.pending = ""
            at, self.matched = min(hits, key=lambda hit: hit[0])
            return buffer[:at], True
        cut = len(buffer) - self._partial_match(buffer)
        self.pending = buffer[cut:]
        return buffer[:cut], False

    def _partial_match(self, text: str) -> int:
        """The length of the longest end of ``text`` that begins a stop string."""
        for n in range(min(len(text), max(map(len, self.stops)) - 1), 0, -1):
            if any(stop.startswith(text[-n:]) for stop in self.stops):
                return n
        return 0

    def flush(self) -> str:
        """The held-back text, once the answer ended without completing a stop string."""
        text, self.pending = self.pending, ""
        return text


class Engine:
    """The interface the HTTP layer needs; subclasses produce the tokens."""

    name: ClassVar[str]

    def __init__(self, models: Sequence[str]) -> None:
        self.models = list(models)
        self.loaded: set[str] = set()  # models held in memory, as the Ollama dialect reports them (/api/ps)
        self.prompt_cache: set[str] = set()  # cached prompt prefixes, as the Anthropic dialect emulates them
        self.stats = Stats()

    @property
    def input_modalities(self) -> frozenset[str]:
        """What content parts the models take (see MODALITIES); the HTTP layer refuses the rest with a 400."""
        return frozenset({"text"})

    @property
    def attestation_mode(self) -> str:
        """How the node answers an attestation challenge (ATTESTATION_MODES); only the simulator lies."""
        return "honest"

    def generate(self, gen: Generation) -> AsyncIterator[str]:
        """Yield the answer's text, one piece per token; set ``gen``'s counters."""
        raise NotImplementedError

    embeds: ClassVar[bool] = False  # whether :meth:`embed` works; the HTTP layer refuses embeddings otherwise

    def can_embed(self, model: str) -> bool:
        """Whether ``model`` (one of :attr:`models`) answers /v1/embeddings."""
        return self.embeds

    def embedding_dimensions(self, model: str) -> int | None:
        """The length of ``model``'s vectors, if fixed; a request for another ``dimensions`` gets a 400."""
        return None

    async def embed(
        self, model: str, texts: list[str], *, input_type: str | None = None
    ) -> tuple[list[list[float]], int]:
        """Return one vector per text and the prompt tokens consumed.

        ``input_type`` ("query", "passage" or None) is the request's hint for
        models trained with such prefixes; others ignore it.
        """
        raise NotImplementedError

    async def images(self, gen: Generation, prompt: str, n: int, size: tuple[int, int]) -> list[bytes]:
        """Return up to ``n`` PNG files of ``size`` (width, height) for ``prompt``."""
        raise ApiError(400, f"The model '{gen.model}' on this node does not generate images.", code="unsupported")

    def controls(self) -> dict[tuple[str, str], Control]:
        """Engine-specific JSON endpoints, by (method, path), served next to the OpenAI API."""
        return {}

    async def close(self) -> None:
        """Release what the engine holds; called once at server shutdown."""


# --- simulator -------------------------------------------------------------------

FAIL_MODES = ("http500", "http429", "http529", "disconnect", "midstream", "hang")
MODALITIES = ("text", "image", "audio")  # chat content parts: text, image_url, input_audio
ATTESTATION_MODES = ("honest", "forged", "stale")  # see nodeserver/attestation.py
# How the node signs sealed requests' usage receipts (nodeserver/sealed.py): honestly, with a key
# that is not its attested one, honestly signed but claiming 1000x the tokens it used, or honestly
# signed for another request (a receipt replayed from elsewhere).
SEALED_MODES = ("honest", "bad_signature", "inflate_tokens", "other_request")


def _number(value: Any, name: str, low: float, high: float = float("inf"), *, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} in [{low:g}, {high:g}], got {value!r}")


@dataclass(frozen=True)
class SimConfig:
    """The simulator's knobs; settable at start-up and, for tests, at run time."""

    ttft_ms: float = 0.0
    tokens_per_s: float = 0.0  # 0 = as fast as possible
    completion_tokens: int = 16  # answer length when the request sets no max_tokens
    fail_rate: float = 0.0  # probability that a request gets fail_mode
    fail_mode: str = "http500"
    fail_after_tokens: int = 3  # midstream: tokens sent before the connection drops
    modalities: tuple[str, ...] = ("text",)  # accepted input; other content parts get a 400
    # Ollama dialect: a streamed /api/pull stops after its first download step until this is false again,
    # so a test can watch a pull in progress without racing it.
    pull_hold: bool = False
    image_limit: int = 0  # at most this many images per request (0 = as many as asked), like a small GPU
    attestation_mode: str = "honest"  # how it answers POST /v1/attestation, if it attests
    sealed_mode: str = "honest"  # how it signs sealed requests' receipts (SEALED_MODES)

    def __post_init__(self) -> None:
        if not isinstance(self.pull_hold, bool):
            raise ValueError(f"pull_hold must be a boolean, got {self.pull_hold!r}")
        kinds = self.modalities
        if isinstance(kinds, str) or not isinstance(kinds, (list, tuple)) or not set(kinds) <= set(MODALITIES):
            raise ValueError(f"modalities must be a list drawn from {', '.join(MODALITIES)}, got {kinds!r}")
        if "text" not in kinds:
            raise ValueError("modalities must include 'text'")
        object.__setattr__(self, "modalities", tuple(m for m in MODALITIES if m in kinds))  # JSON sends a list
        _number(self.ttft_ms, "ttft_ms", 0)
        _number(self.tokens_per_s, "tokens_per_s", 0)
        _number(self.completion_tokens, "completion_tokens", 0, integer=True)
        _number(self.fail_rate, "fail_rate", 0, 1)
        _number(self.fail_after_tokens, "fail_after_tokens", 0, integer=True)
        _number(self.image_limit, "image_limit", 0, integer=True)
        if self.fail_mode not in FAIL_MODES:
            raise ValueError(f"fail_mode must be one of {', '.join(FAIL_MODES)}, got {self.fail_mode!r}")
        if self.attestation_mode not in ATTESTATION_MODES:
            raise ValueError(f"attestation_mode must be one of {', '.join(ATTESTATION_MODES)}, got {self.attestation_mode!r}")
        if self.sealed_mode not in SEALED_MODES:
            raise ValueError(f"sealed_mode must be one of {', '.join(SEALED_MODES)}, got {self.sealed_mode!r}")

    def updated(self, changes: Mapping[str, Any]) -> SimConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)


class SimulatorEngine(Engine):
    """Synthetic answers with realistic timing and failures, deterministic for a given seed."""

    name = "simulator"
    embeds = True

    def __init__(self, models: Sequence[str], config: SimConfig, seed: int = 0) -> None:
        super().__init__(models)
        self.initial_models = list(models)
        self.initial_config = self.config = config
        self.seed = seed
        self.rng = random.Random(seed)

    @property
    def input_modalities(self) -> frozenset[str]:
        return frozenset(self.config.modalities)

    @property
    def attestation_mode(self) -> str:
        return self.config.attestation_mode

    def _answer(self, gen: Generation, config: SimConfig) -> tuple[list[str], str]:
        """The tokens to send and the finish reason if they all go out; sets ``gen.tool_call`` for a call."""
        if gen.messages is not None:
            user = [m for m in gen.messages if m["role"] == "user"]
            last = user[-1] if user else {"content": ""}
            after_tool = gen.messages[-1]["role"] == "tool"
            if (name := self._tool_to_call(gen, last["content"], after_tool)) is not None:
                gen.tool_call = ToolCall(id="call_" + os.urandom(12).hex(), name=name)
                _, arguments = tokens.parse_call(last["content"], [name])
                answer, finish_reason = tokens.argument_pieces(arguments), "tool_calls"
            elif after_tool:
                limit = config.completion_tokens if gen.max_tokens is None else gen.max_tokens
                answer, finish_reason = tokens.tool_result_tokens(gen.messages[-1]["content"], limit), "stop"
            else:
                answer, finish_reason = tokens.echo_tokens(last["content"], last.get("media", ())), "stop"
        else:
            answer, finish_reason = tokens.echo_tokens(gen.prompt or ""), "stop"
        if answer is None:
            count = config.completion_tokens if gen.max_tokens is None else gen.max_tokens
            return tokens.word_tokens(count), "stop" if gen.max_tokens is None else "length"
        if gen.max_tokens is not None and len(answer) > gen.max_tokens:
            return answer[: gen.max_tokens], "length"
        return answer, finish_reason

    @staticmethod
    def _tool_to_call(gen: Generation, last_user_text: str, after_tool: bool = False) -> str | None:
        """The function to call: forced by ``tool_choice``; or, when a call is required or
        asked for (and no tool result came after the asking), the one the ``call:`` message
        names, else the first tool."""
        if not gen.tools or gen.tool_choice == "none":
            return None
        names = [t["function"]["name"] for t in gen.tools]
        if gen.tool_choice == "required" or (not after_tool and last_user_text.startswith(tokens.CALL_PREFIX)):
            return gen.forced_tool or tokens.parse_call(last_user_text, names)[0] or names[0]
        return None

    async def generate(self, gen: Generation) -> AsyncIterator[str]:
        config = self.config  # a request keeps the settings it started with
        if gen.messages is not None:
            gen.prompt_tokens = tokens.chat_prompt_tokens(gen.messages, gen.tools)
        else:
            gen.prompt_tokens = tokens.text_tokens(gen.prompt or "")
        failure = await self._inject(gen, config)
        answer, finish_reason = self._answer(gen, config)
        if failure == "midstream":
            answer = answer[: config.fail_after_tokens]
        stop = StopScanner(gen.stop)
        loop = asyncio.get_running_loop()
        if config.ttft_ms:
            await asyncio.sleep(config.ttft_ms / 1000)
        first_at = loop.time()
        for i, token in enumerate(answer):
            if config.tokens_per_s and i:
                # Scheduled from the first token, so sleep overshoot does not accumulate.
                await asyncio.sleep(first_at + i / config.tokens_per_s - loop.time())
            gen.completion_tokens += 1
            text, hit = stop.feed(token)
            if text:
                yield text
            if hit:
                gen.finish_reason, gen.stop_sequence = "stop", stop.matched
                return
        if failure == "midstream":
            raise DropConnection
        if tail := stop.flush():
            yield tail
        gen.finish_reason = finish_reason

    async def _inject(self, gen: Generation, config: SimConfig) -> str | None:
        """Draw this request's failure and raise it if it happens before any output;
        returns "midstream" for a failure the caller plays out after some output."""
        # Draw for every request, so the failure pattern depends only on the seed and request order.
        failure = config.fail_mode if self.rng.random() < config.fail_rate else None
        gen.injected_failure = failure is not None
        if failure == "http500":
            raise ApiError(500, "Injected failure.", type="server_error", code="injected_failure")
        if failure == "http429":
            limited = {"type": "rate_limit_error", "code": "rate_limit_exceeded", "headers": {"Retry-After": "1"}}
            raise ApiError(429, "Injected rate limit.", **limited)
        if failure == "http529":  # Anthropic's "overloaded"
            raise ApiError(529, "Overloaded", type="overloaded_error", code="overloaded")
        if failure == "disconnect":
            raise DropConnection
        if failure == "hang":
            await asyncio.get_running_loop().create_future()  # until the client gives up
        return failure

    async def embed(
        self, model: str, texts: list[str], *, input_type: str | None = None
    ) -> tuple[list[list[float]], int]:
        return [tokens.embedding(t) for t in texts], sum(tokens.text_tokens(t) for t in texts)

    async def images(self, gen: Generation, prompt: str, n: int, size: tuple[int, int]) -> list[bytes]:
        """Real PNGs, deterministic in the prompt and the image's index; failures as for chat
        ("midstream" drops the connection once the images are made), ``image_limit`` caps the count."""
        config = self.config
        failure = await self._inject(gen, config)
        if config.ttft_ms:
            await asyncio.sleep(config.ttft_ms / 1000)
        count = min(n, config.image_limit) if config.image_limit else n
        width, height = size
        made = await asyncio.to_thread(
            lambda: [png.png(width, height, f"{prompt}\x00{i}".encode()) for i in range(count)]
        )
        if failure == "midstream":
            raise DropConnection
        self.stats.images_generated += len(made)
        return made

    def controls(self) -> dict[tuple[str, str], Control]:
        return {
            ("POST", "/_sim/config"): self._configure,
            ("POST", "/_sim/reset"): self._reset,
            ("GET", "/_sim/stats"): lambda body: {**self.stats.snapshot(), "loaded": sorted(self.loaded)},
        }

    def _configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        try:
            self.config = self.config.updated(changes)
        except (ValueError, TypeError) as exc:
            raise ApiError(400, str(exc)) from None
        return dataclasses.asdict(self.config)

    def _reset(self, body: dict[str, Any]) -> dict[str, Any]:
        self.config = self.initial_config
        self.models[:] = self.initial_models  # forget pulled models
        self.loaded.clear()
        self.prompt_cache.clear()
        self.rng = random.Random(self.seed)
        self.stats.reset()
        return dataclasses.asdict(self.config)


# --- llama.cpp ---------------------------------------------------------------------

# llama.cpp's own server defaults: OpenAI's (1.0, 1.0) make a small model ramble.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95


class LlamaEngine(Engine):
    """A GGUF model through llama.cpp, with exact token counts.

    SmolLM2-135M Q4_1 on 2 threads makes about 120 tokens/s on short contexts.

    The model is not thread-safe and generation blocks, so generations run on
    a single worker thread: requests queue in its FIFO, and the model can
    never be used by two generations at once, even when an abandoned request
    is torn down before its thread has noticed. Each generation checks a cancel
    flag every token, so a client that leaves frees the model within a token.

    With an ``embedder`` the node also serves that embedding model, on a
    worker thread of its own, so a long embedding batch does not stall chats
    (and the chat model answers no embeddings, the embedding model no chats).
    """

    name = "llama"

    def __init__(
        self, model_path: str, alias: str, *, n_ctx: int, n_threads: int, embedder: Embedder | None = None
    ) -> None:
        import llama_cpp  # here, so the simulator never pays for loading llama.cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        super().__init__([alias] if embedder is None else [alias, embedder.model])
        self.alias = alias
        self.embedder = embedder
        self.embed_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self.llm: Llama = llama_cpp.Llama(model_path=model_path, n_ctx=n_ctx, n_threads=n_threads, verbose=False)
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{model_path} has no tokenizer.chat_template; cannot format chats")
        model = self.llm._model  # noqa: SLF001 - the public API has no end-of-generation test
        # EOS, EOT and every other token the vocabulary marks as ending a turn.
        self.is_end: Callable[[int], bool] = lambda token: llama_cpp.llama_vocab_is_eog(model.vocab, token)
        self.bos_text = self.llm.detokenize([self.llm.token_bos()], special=True).decode()
        self.random_seed = llama_cpp.LLAMA_DEFAULT_SEED  # llama.cpp draws a fresh seed for this value
        self.chat_format = Jinja2ChatFormatter(
            template=template,
            eos_token=self.llm.detokenize([self.llm.token_eos()], special=True).decode(),
            bos_token=self.bos_text,
        )
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self.cancels: set[threading.Event] = set()

    def _prompt(self, gen: Generation) -> list[int]:
        if gen.messages is not None:
            try:
                text = self.chat_format(messages=gen.messages).prompt
            except Exception as exc:  # the template may raise_exception() on chats it rejects
                raise ApiError(400, f"The chat template rejected the messages: {exc}") from None
        else:
            text = gen.prompt or ""
        # llama.cpp adds BOS only for models that want one, and not after a template that wrote it.
        add_bos = not (self.bos_text and text.startswith(self.bos_text))
        prompt = self.llm.tokenize(text.encode(), add_bos=add_bos, special=True)
        if len(prompt) >= self.llm.n_ctx():
            raise ApiError(
                400,
                f"The prompt is {len(prompt)} tokens; this node's context window is {self.llm.n_ctx()}.",
                code="context_length_exceeded",
            )
        return prompt

    async def generate(self, gen: Generation) -> AsyncIterator[str]:
        if gen.model != self.alias:
            message = f"The model '{gen.model}' is an embedding model: use /v1/embeddings."
            raise ApiError(400, message, code="unsupported")
        prompt = self._prompt(gen)
        gen.prompt_tokens = len(prompt)
        room = self.llm.n_ctx() - len(prompt)  # the answer is cut ("length") where the context ends
        limit = room if gen.max_tokens is None else min(gen.max_tokens, room)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | ApiError | None] = asyncio.Queue()
        cancel = threading.Event()
        self.cancels.add(cancel)

        def emit(item: str | ApiError | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        self.worker.submit(self._run, gen, prompt, limit, cancel, emit)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, ApiError):
                    raise item
                yield item
        finally:
            cancel.set()
            self.cancels.discard(cancel)

    def _run(
        self, gen: Generation, prompt: list[int], limit: int, cancel: threading.Event, emit: Callable[[Any], None]
    ) -> None:
        """Worker thread: report the outcome of :meth:`_decode` to the event loop."""
        try:
            self._decode(gen, prompt, limit, cancel, emit)
        except Exception:
            log.exception("generation %s failed", gen.id)
            emit(ApiError(500, "The model failed while generating.", type="server_error", code="generation_failed"))
        else:
            emit(None)

    def _decode(
        self, gen: Generation, prompt: list[int], limit: int, cancel: threading.Event, emit: Callable[[str], None]
    ) -> None:
        if cancel.is_set():  # the client left while this request was queued
            return
        self.llm.set_seed(self.random_seed if gen.seed is None else gen.seed & 0xFFFFFFFF)
        temperature = DEFAULT_TEMPERATURE if gen.temperature is None else gen.temperature
        top_p = DEFAULT_TOP_P if gen.top_p is None else gen.top_p
        # A token can end inside a multi-byte character: decode incrementally, never split one.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stop = StopScanner(gen.stop)
        gen.finish_reason = "length"
        for token in self.llm.generate(prompt, temp=temperature, top_p=top_p):
            if cancel.is_set():
                return
            if self.is_end(token):
                gen.finish_reason = "stop"
                break
            gen.completion_tokens += 1
            text, hit = stop.feed(decoder.decode(self.llm.detokenize([token])))
            if text:
                emit(text)
            if hit:
                gen.finish_reason, gen.stop_sequence = "stop", stop.matched
                return
            if gen.completion_tokens >= limit:
                break
        if tail := stop.flush() + decoder.decode(b"", final=True):
            emit(tail)

    def can_embed(self, model: str) -> bool:
        return self.embedder is not None and model == self.embedder.model

    def embedding_dimensions(self, model: str) -> int | None:
        return self.embedder.dimensions if self.can_embed(model) else None

    async def embed(
        self, model: str, texts: list[str], *, input_type: str | None = None
    ) -> tuple[list[list[float]], int]:
        assert self.embedder is not None and model == self.embedder.model  # the HTTP layer checked can_embed
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.embed_worker, self.embedder.embed, texts, input_type)
        except EmbedError as exc:
            raise ApiError(400, str(exc), code=exc.code) from None

    async def close(self) -> None:
        for cancel in list(self.cancels):
            cancel.set()
        await asyncio.to_thread(self.worker.shutdown, wait=True, cancel_futures=True)
        await asyncio.to_thread(self.embed_worker.shutdown, wait=True, cancel_futures=True)

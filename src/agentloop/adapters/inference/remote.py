"""Inference on another server, behind the same InferenceEngine port as the embedded engine.

- `OpenAIEngine`: any OpenAI-compatible server (llama.cpp's server, llama-cpp-python's server, vLLM) through
  the official `openai` client. It sends the same rendered Gemma prompt as the embedded engine to
  `/v1/completions`; a tool-call constraint becomes a GBNF grammar in the request (`grammar` for llama.cpp,
  `guided_grammar` for vLLM). As in the embedded engine, the grammar only decides "call or text": a call is
  decoded whole under it, a text answer continues unconstrained after its first character.
- `OllamaEngine`: Ollama's native `/api/chat` through the official `ollama` client, with the tools as
  Ollama tool definitions; a native tool call comes back in our `<tool_call>{...}</tool_call>` text form, so
  the agent loop parses every backend's reply the same way. A trained adapter becomes an Ollama model
  (`/api/blobs` + `/api/create`).

Every call has a timeout; idempotent calls (opening a generation before any token arrived, tokenizing,
creating a model) are retried with exponential backoff and jitter (tenacity). Errors leave as InferenceError.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jsonschema
import ollama
import openai
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from agentloop.application.ports import ChatPrompt, Completion, GenerationRequest, OutputConstraint, Token
from agentloop.application.prompt import CALL_CLOSE, CALL_OPEN
from agentloop.domain.model import Message, Role, Usage
from agentloop.errors import InferenceError

logger = logging.getLogger(__name__)

T = TypeVar("T")
CONNECT_TIMEOUT_S = 5.0
# Without a tokenizer endpoint, assume 3 bytes per token: Gemma averages about 4, so this over-counts and a
# prompt that would overflow the server's window is refused here rather than there.
BYTES_PER_TOKEN_ESTIMATE = 3


async def with_retries(
    call: Callable[[], Awaitable[T]], retries: int, transient: Callable[[BaseException], bool]
) -> T:
    """Run an idempotent call, retrying transient failures with exponential backoff and jitter."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.5),
        retry=retry_if_exception(transient),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity re-raises the last error")


def estimate_tokens(text: str) -> int:
    return len(text.encode("utf-8")) // BYTES_PER_TOKEN_ESTIMATE + 1


def server_grammar(constraint: OutputConstraint) -> str:
    """The embedded engine's decision grammar: a whole call, or the first character of a text answer."""
    from agentloop.adapters.inference.llama import constraint_grammar

    return constraint_grammar(constraint)


# --- OpenAI-compatible servers ------------------------------------------------------------------------------


def _openai_transient(exc: BaseException) -> bool:
    transient = openai.APIConnectionError | openai.InternalServerError | openai.RateLimitError
    return isinstance(exc, transient | httpx.TransportError) or (
        isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code >= 500
    )


class _RemoteEngine:
    """What every remote backend keeps: the base model's name, the one it serves now (an adapter's), the
    version it reports, its context size and how often a transient failure is retried."""

    def __init__(self, model: str, context_size: int, retries: int, model_version: str) -> None:
        self.base_model = model
        self.served_model = model
        self.retries = retries
        self._context = context_size
        self._version = model_version

    @property
    def model_version(self) -> str:
        return self._version

    @property
    def context_size(self) -> int:
        return self._context

    def _serving(self, model: str, version_id: str) -> None:
        self.served_model, self._version = model, version_id


class OpenAIEngine(_RemoteEngine):
    """An OpenAI-compatible completion server as the InferenceEngine (and AdapterHost, where it can load LoRAs
    at run time: vLLM's /v1/load_lora_adapter)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str = "none",
        context_size: int = 4096,
        timeout_s: float = 60.0,
        retries: int = 2,
        grammar_field: str = "grammar",
        model_version: str = "base",
    ) -> None:
        super().__init__(model, context_size, retries, model_version)
        self.base_url = base_url.rstrip("/")
        self.root_url = self.base_url.removesuffix("/v1")
        self.grammar_field = grammar_field
        timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))
        self.client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=api_key, timeout=timeout_s, max_retries=0
        )
        self.http = httpx.AsyncClient(timeout=timeout, headers={"Authorization": f"Bearer {api_key}"})
        self._tokenize_route: str | None = None

    async def close(self) -> None:
        await self.client.close()
        await self.http.aclose()

    async def count_tokens(self, text: str) -> int:
        """The server's own count (llama-cpp-python's /extras/tokenize/count, or /tokenize of vLLM and
        llama.cpp), or a conservative estimate when it has neither."""
        routes = [self._tokenize_route] if self._tokenize_route else list(_TOKENIZE_ROUTES)
        for route in routes:
            try:
                count = await with_retries(
                    partial(self._tokenize, route, text), self.retries, _openai_transient
                )
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code < 500:
                    continue
                raise InferenceError(f"tokenizer at {self.root_url} failed: {exc}") from exc
            except httpx.HTTPError as exc:
                raise InferenceError(f"server at {self.root_url} unreachable: {exc!r}") from exc
            self._tokenize_route = route
            return count
        return estimate_tokens(text)

    async def _tokenize(self, route: str, text: str) -> int:
        body = {"input": text, "prompt": text, "content": text, "model": self.served_model}
        response = await self.http.post(self.root_url + route, json=body)
        response.raise_for_status()
        data = response.json()
        return int(data["count"]) if "count" in data else len(data["tokens"])

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Token | Completion, None]:
        run = _OpenAIRun(self, request, time.perf_counter())
        constraint = request.constraint
        if constraint is None or not self.grammar_field:
            async for token in run.generate(request.prompt, None, request.max_tokens):
                yield token
        else:
            async for token in self._constrained(run, constraint):
                yield token
        yield run.completion(await self._prompt_tokens(request, run))

    async def _constrained(
        self, run: _OpenAIRun, constraint: OutputConstraint
    ) -> AsyncGenerator[Token, None]:
        """Greedy requests first decode freely and keep the result if the grammar would have produced the
        same tokens (the reply is a valid call, or allowed text): a server's full-vocabulary grammar costs
        several times the decode. Otherwise, and for sampling, decode under the grammar."""
        request = run.request
        if not request.temperature:
            held: list[Token] = []
            verdict = _Verdict.UNDECIDED
            async with aclosing(run.generate(request.prompt, None, request.max_tokens)) as tokens:
                async for token in tokens:
                    verdict = _verdict(run.text, constraint)
                    if verdict == _Verdict.INVALID:
                        break
                    held.append(token)
                    if verdict == _Verdict.TEXT:
                        for kept in held:
                            yield kept
                        held.clear()
            if verdict == _Verdict.TEXT:
                return
            call = _checked_call(run.text, constraint) if verdict == _Verdict.UNDECIDED else None
            if call is not None:
                run.text = call
                yield Token(call)
                return
            run.restart()
        grammar = server_grammar(constraint)
        async for token in run.generate(request.prompt, grammar, request.max_tokens):
            yield token
        left = request.max_tokens - (run.completion_tokens - run.discarded)
        chose_text = not run.text.lstrip().startswith(constraint.call_prefix)
        if chose_text and run.text and left > 0:
            # The grammar chose the text branch (its first character): continue it unconstrained.
            async for token in run.generate(request.prompt + run.text, None, left):
                yield token

    async def _prompt_tokens(self, request: GenerationRequest, run: _OpenAIRun) -> int:
        if run.prompt_tokens is not None:
            return run.prompt_tokens
        try:
            return await self.count_tokens(request.prompt)
        except InferenceError:
            return estimate_tokens(request.prompt)

    async def open_stream(
        self, prompt: str, request: GenerationRequest, grammar: str | None, max_tokens: int
    ) -> Any:
        extra: dict[str, Any] = {"top_k": 0 if request.temperature else 1}
        if grammar is not None:
            extra[self.grammar_field] = grammar
        return await self.client.completions.create(
            model=self.served_model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            # OpenAI allows 4 stop sequences: the prompt format's three and the single-line one fit.
            stop=list(request.stop)[:4] or None,
            seed=request.seed,
            stream=True,
            extra_body=extra,
        )

    async def serve_version(self, version_id: str, adapter_path: Path | None) -> None:
        """Base version: the server's model. Adapter: vLLM's /v1/load_lora_adapter (PEFT directory)."""
        if adapter_path is None:
            self._serving(self.base_model, version_id)
            return
        peft = adapter_path.parent / "peft"
        body = {"lora_name": version_id, "lora_path": str(peft if peft.is_dir() else adapter_path)}
        try:
            response = await with_retries(
                lambda: self.http.post(f"{self.root_url}/v1/load_lora_adapter", json=body),
                self.retries,
                _openai_transient,
            )
        except httpx.HTTPError as exc:
            raise InferenceError(f"could not reach {self.root_url} to load an adapter: {exc!r}") from exc
        if response.status_code in (404, 405):
            raise InferenceError(
                f"the server at {self.root_url} cannot load LoRA adapters at run time "
                "(vLLM can, with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"
            )
        if response.status_code >= 400 and "already" not in response.text.lower():
            raise InferenceError(f"the server refused adapter {version_id}: {response.text[:200]}")
        self._serving(version_id, version_id)


# llama-cpp-python's server, then vLLM's and llama.cpp's.
_TOKENIZE_ROUTES = ("/extras/tokenize/count", "/tokenize")


class _Verdict(StrEnum):
    UNDECIDED = "undecided"  # may still become a call
    TEXT = "text"  # an answer the grammar allows
    INVALID = "invalid"  # the grammar would have decoded something else


def _verdict(text: str, constraint: OutputConstraint) -> _Verdict:
    if not text:
        return _Verdict.UNDECIDED
    prefix = constraint.call_prefix
    if constraint.allow_call and (prefix.startswith(text) or text.startswith(prefix)):
        return _Verdict.UNDECIDED
    # The grammar's text branch starts with a character that is neither "<" nor whitespace.
    allowed = constraint.allow_text or not constraint.allow_call
    return _Verdict.TEXT if allowed and text[0] not in "< \t\n" else _Verdict.INVALID


def _checked_call(text: str, constraint: OutputConstraint) -> str | None:
    """`prefix JSON suffix` cut at the suffix, if the JSON matches the call schema; else None."""
    prefix, suffix = constraint.call_prefix, constraint.call_suffix
    if not constraint.allow_call or not text.startswith(prefix) or suffix not in text:
        return None
    body = text[len(prefix) : text.index(suffix)]
    try:
        jsonschema.validate(json.loads(body), constraint.call_schema)
    except (ValueError, jsonschema.ValidationError, jsonschema.SchemaError):
        return None
    return f"{prefix}{body}{suffix}"


class _OpenAIRun:
    """One request: one or two streamed completions (decide under the grammar, then continue freely)."""

    def __init__(self, engine: OpenAIEngine, request: GenerationRequest, started: float) -> None:
        self.engine = engine
        self.request = request
        self.started = started
        self.first_token_at: float | None = None
        self.text = ""
        self.finish = "length"
        self.completion_tokens = 0
        self.prompt_tokens: int | None = None
        self.discarded = 0

    def restart(self) -> None:
        """Drop a speculative decode's text; its tokens stay counted (they were generated)."""
        self.text, self.finish, self.first_token_at = "", "length", None
        self.discarded = self.completion_tokens

    async def generate(
        self, prompt: str, grammar: str | None, max_tokens: int
    ) -> AsyncGenerator[Token, None]:
        try:
            stream = await with_retries(
                lambda: self.engine.open_stream(prompt, self.request, grammar, max_tokens),
                self.engine.retries,
                _openai_transient,
            )
        except openai.OpenAIError as exc:
            raise InferenceError(f"OpenAI-compatible server at {self.engine.base_url}: {exc}") from exc
        try:
            async for chunk in stream:
                token = self._take(chunk, counted=prompt == self.request.prompt)
                if token:
                    yield Token(token)
        except openai.OpenAIError as exc:
            raise InferenceError(f"OpenAI-compatible server stream broke: {exc}") from exc
        finally:
            await stream.close()

    def _take(self, chunk: Any, counted: bool) -> str:
        if chunk.usage is not None and counted:
            self.prompt_tokens = chunk.usage.prompt_tokens
        if not chunk.choices:
            return ""
        choice = chunk.choices[0]
        text = choice.text or ""
        if text:
            self.completion_tokens += 1
            self.first_token_at = self.first_token_at or time.perf_counter()
            self.text += text
        if choice.finish_reason:
            self.finish = "stop" if choice.finish_reason == "stop" else choice.finish_reason
        return text

    def completion(self, prompt_tokens: int) -> Completion:
        now = time.perf_counter()
        return Completion(
            text=self.text,
            usage=Usage(prompt_tokens, self.completion_tokens),
            finish_reason=self.finish,
            model_version=self.engine.model_version,
            duration_ms=(now - self.started) * 1000.0,
            ttft_ms=((self.first_token_at or now) - self.started) * 1000.0,
        )


# --- Ollama -------------------------------------------------------------------------------------------------


def _ollama_transient(exc: BaseException) -> bool:
    if isinstance(exc, ollama.ResponseError):
        return exc.status_code >= 500 or exc.status_code == 429
    return isinstance(exc, ConnectionError | httpx.TransportError)


def ollama_messages(chat: ChatPrompt) -> list[dict[str, Any]]:
    """Our conversation as Ollama chat messages: tool calls and results in Ollama's native fields."""
    out: list[dict[str, Any]] = [{"role": "system", "content": chat.system}] if chat.system else []
    for message in chat.messages:
        converted = _ollama_message(message)
        if converted is not None:
            out.append(converted)
    return out


def _ollama_message(message: Message) -> dict[str, Any] | None:
    if message.role == Role.ASSISTANT and message.tool_call is not None:
        call = {"function": {"name": message.tool_call.name, "arguments": message.tool_call.arguments}}
        return {"role": "assistant", "content": "", "tool_calls": [call]}
    if message.role == Role.TOOL:
        name = message.tool_result.name if message.tool_result else (message.tool_call or _NO_CALL).name
        output = message.tool_result.output if message.tool_result else message.content
        return {"role": "tool", "content": output, "tool_name": name}
    if message.role in (Role.USER, Role.ASSISTANT):
        return {"role": message.role.value, "content": message.content}
    return None


class _NoCall:
    name = "tool"


_NO_CALL = _NoCall()


def ollama_tools(chat: ChatPrompt) -> list[dict[str, Any]]:
    return [{"type": "function", "function": dict(spec)} for spec in chat.tools]


def render_call(name: str, arguments: Any) -> str:
    return f"{CALL_OPEN}{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}{CALL_CLOSE}"


class OllamaEngine(_RemoteEngine):
    """An Ollama server as the InferenceEngine and AdapterHost (an adapter becomes an Ollama model)."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        context_size: int = 4096,
        timeout_s: float = 60.0,
        retries: int = 2,
        model_version: str = "base",
    ) -> None:
        super().__init__(model, context_size, retries, model_version)
        self.url = url.rstrip("/")
        timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))
        self.client = ollama.AsyncClient(host=self.url, timeout=timeout)

    async def close(self) -> None:
        await self.client._client.aclose()

    async def count_tokens(self, text: str) -> int:
        # Ollama has no tokenizer endpoint; the estimate over-counts, so overflows are caught here.
        return estimate_tokens(text)

    async def probe(self) -> None:
        """Readiness: the server answers and knows the served model."""
        await self._call(lambda: self.client.show(self.served_model))

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await with_retries(call, self.retries, _ollama_transient)
        except (ollama.ResponseError, ollama.RequestError) as exc:
            raise InferenceError(f"Ollama at {self.url}: {exc}") from exc
        except (ConnectionError, httpx.HTTPError) as exc:
            raise InferenceError(f"Ollama at {self.url} unreachable: {exc!r}") from exc
        except ValueError as exc:  # a reply that does not parse as Ollama's documented shape
            raise InferenceError(f"Ollama at {self.url} answered unexpectedly: {exc}") from exc

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Token | Completion, None]:
        started = time.perf_counter()
        # The client sends the request when the stream is first read: retry up to the first chunk.
        chunks, first = await self._call(lambda: self._open(request))
        text, first_at, calls = "", None, []
        final: Any = None
        try:
            async for chunk in _prepend(first, chunks):
                piece, more_calls = _ollama_piece(chunk)
                calls += more_calls
                if piece:
                    first_at = first_at or time.perf_counter()
                    text += piece
                    yield Token(piece)
                if chunk.done:
                    final = chunk
        except (ollama.ResponseError, ConnectionError, httpx.HTTPError) as exc:
            raise InferenceError(f"Ollama stream broke: {exc!r}") from exc
        text = self._reply_text(request, text, calls)
        now = time.perf_counter()
        yield Completion(
            text=text,
            usage=Usage(getattr(final, "prompt_eval_count", 0) or 0, getattr(final, "eval_count", 0) or 0),
            finish_reason="length" if getattr(final, "done_reason", "stop") == "length" else "stop",
            model_version=self._version,
            duration_ms=(now - started) * 1000.0,
            ttft_ms=((first_at or now) - started) * 1000.0,
        )

    def _reply_text(self, request: GenerationRequest, text: str, calls: list[tuple[str, Any]]) -> str:
        if calls:
            return render_call(*calls[0])
        constraint = request.constraint
        if constraint is not None and constraint.allow_call and not constraint.allow_text:
            # A required call was decoded as JSON under `format`: give it our call form.
            return f"{constraint.call_prefix}{text.strip()}{constraint.call_suffix}"
        return text

    async def _open(self, request: GenerationRequest) -> tuple[Any, Any]:
        chunks = await self._request(request)
        return chunks, await anext(chunks)

    async def _request(self, request: GenerationRequest) -> Any:
        options: dict[str, Any] = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "num_predict": request.max_tokens,
            "stop": list(request.stop),
        }
        if request.seed is not None:
            options["seed"] = request.seed
        constraint = request.constraint
        call_required = constraint is not None and constraint.allow_call and not constraint.allow_text
        json_format = constraint.call_schema if call_required and constraint else None
        if request.chat is None:
            # No structured prompt: the rendered Gemma prompt as is (Ollama's raw mode).
            return await self.client.generate(
                model=self.served_model,
                prompt=request.prompt,
                raw=True,
                stream=True,
                options=options,
                format=json_format,
            )
        offer_tools = constraint is not None and constraint.allow_call and constraint.allow_text
        return await self.client.chat(
            model=self.served_model,
            messages=ollama_messages(request.chat),
            tools=ollama_tools(request.chat) if offer_tools else None,
            stream=True,
            options=options,
            format=json_format,
        )

    async def serve_version(self, version_id: str, adapter_path: Path | None) -> None:
        """Base version: the configured model. Adapter: upload the GGUF LoRA and create an Ollama model
        `agentloop-<version>` FROM the base model with that ADAPTER."""
        if adapter_path is None:
            self._serving(self.base_model, version_id)
            return
        if not await asyncio.to_thread(adapter_path.is_file):
            raise InferenceError(f"adapter file {adapter_path} does not exist")
        name = ollama_model_name(version_id)
        digest = await self._call(lambda: self.client.create_blob(adapter_path))
        await self._call(
            lambda: self.client.create(
                model=name, from_=self.base_model, adapters={adapter_path.name: digest}, stream=False
            )
        )
        self._serving(name, version_id)


async def _prepend(first: Any, rest: Any) -> AsyncGenerator[Any, None]:
    yield first
    async for item in rest:
        yield item


def ollama_model_name(version_id: str) -> str:
    safe = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_.") else "-" for ch in version_id.lower())
    return f"agentloop-{safe}"


def _ollama_piece(chunk: Any) -> tuple[str, list[tuple[str, Any]]]:
    message = getattr(chunk, "message", None)
    if message is None:  # /api/generate
        return getattr(chunk, "response", "") or "", []
    calls = [(call.function.name, dict(call.function.arguments)) for call in (message.tool_calls or [])]
    return message.content or "", calls

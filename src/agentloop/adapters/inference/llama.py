"""The embedded engine: llama-cpp-python in-process, driven by one worker thread that owns the model.

Requests queue on the thread (llama.cpp contexts are not thread-safe), so the event loop never blocks; a
consumer that stops reading sets the job's cancel flag and generation stops at the next token. The prompt
prefix (system text, tool list, examples) stays in the KV cache between requests: llama-cpp-python's
`generate` re-evaluates only the tokens after the longest common prefix.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import math
import queue
import re
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentloop.application.ports import Completion, GenerationRequest, OutputConstraint, Token
from agentloop.domain.model import Usage
from agentloop.errors import ContextOverflowError, EngineNotReadyError, InferenceError, ValidationError

# The text branch of a decision only fixes the first character (not whitespace, not the call's "<"); after
# that the engine drops the grammar, because checking 262k vocabulary entries per token is slow.
_TEXT_START = r"[^<\x20\t\n]"


def constraint_grammar(constraint: OutputConstraint) -> str:
    """GBNF for `prefix JSON suffix`, or a first character that starts plain text when text is allowed."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    if not constraint.allow_call:
        return f"root ::= {_TEXT_START}\n"
    body = json_schema_to_gbnf(json.dumps(constraint.call_schema))
    body = re.sub(r"^root\s*::=", "call ::=", body, flags=re.MULTILINE)
    root = f"root ::= {json.dumps(constraint.call_prefix)} call {json.dumps(constraint.call_suffix)}"
    if constraint.allow_text:
        root += f" | {_TEXT_START}"
    return f"{root}\n{body}"


def _may_be_call(text: str, prefix: str) -> bool:
    return prefix.startswith(text) or text.startswith(prefix)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might begin a stop sequence and must wait for the next token."""
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                hold = max(hold, size)
                break
    return hold


@dataclass
class _Job:
    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Token | Completion | BaseException]
    cancel: threading.Event = field(default_factory=threading.Event)

    def emit(self, item: Token | Completion | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


@dataclass
class _Control:
    """Work that must run on the model thread between generations (e.g. swapping adapters)."""

    action: Callable[[Any], Any]
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[Any]


class LlamaEngine:
    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 4096,
        n_threads: int = 2,
        n_batch: int = 512,
        model_version: str = "base",
        max_parallel: int = 1,
    ) -> None:
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_batch = n_batch
        self._version = model_version
        # Sequences decoded together in one llama.cpp batch; 1 serves one request at a time.
        self.max_parallel = max(1, max_parallel)
        self._scheduler: Any = None
        self._llm: Any = None
        self._jobs: queue.Queue[_Job | _Control | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._grammars: dict[str, Any] = {}
        self._adapters: dict[str, Any] = {}
        self.loaded = threading.Event()
        self.load_error: BaseException | None = None
        self.stats = {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0}

    @property
    def model_version(self) -> str:
        return self._version

    @property
    def context_size(self) -> int:
        return self.n_ctx

    @property
    def queue_depth(self) -> int:
        waiting = len(self._scheduler.waiting) if self._scheduler is not None else 0
        return self._jobs.qsize() + waiting

    async def start(self) -> None:
        """Load the model on the worker thread and wait until it is ready."""
        self._thread = threading.Thread(target=self._run, name="llama-engine", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self.loaded.wait)
        if self.load_error is not None:
            raise EngineNotReadyError(
                f"could not load {self.model_path}: {self.load_error}"
            ) from self.load_error

    async def close(self) -> None:
        if self._thread is None:
            return
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join, 30)
        self._thread = None

    async def count_tokens(self, text: str) -> int:
        # Tokenizing only reads the vocabulary, so it may run beside a generation on the model thread.
        return len(await asyncio.to_thread(self._tokenize, text))

    def _tokenize(self, text: str) -> list[int]:
        if self._llm is None:
            raise EngineNotReadyError("the model is not loaded")
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    async def serve_version(self, version_id: str, adapter_path: Path | None) -> None:
        """Hot swap: queued behind the requests already submitted, so those finish on the old version."""
        await self.run_on_model_thread(lambda llm: self._swap(llm, version_id, adapter_path))

    def _swap(self, llm: Any, version_id: str, adapter_path: Path | None) -> None:
        from llama_cpp import llama_cpp as C

        if adapter_path is None:
            result = C.llama_set_adapters_lora(llm._ctx.ctx, None, 0, None)
        else:
            adapter = self._adapter(llm, adapter_path)
            adapters = (C.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(1.0)
            result = C.llama_set_adapters_lora(llm._ctx.ctx, adapters, 1, scales)
        if result != 0:
            raise InferenceError(f"llama.cpp refused the adapter for version {version_id} (code {result})")
        # The KV cache holds activations computed under the old weights: drop it.
        llm.reset()
        C.llama_memory_clear(C.llama_get_memory(llm._ctx.ctx), True)
        if self._scheduler is not None:
            self._scheduler.forget()
        self._version = version_id
        self.stats["swaps"] = self.stats.get("swaps", 0) + 1

    def _adapter(self, llm: Any, path: Path) -> Any:
        # Loaded adapters stay in memory (a few MB each), so rolling back is instant.
        from llama_cpp import llama_cpp as C

        key = str(path.resolve())
        if key not in self._adapters:
            if not path.is_file():
                raise InferenceError(f"adapter file {path} does not exist")
            adapter = C.llama_adapter_lora_init(llm._model.model, key.encode("utf-8"))
            if not adapter:
                raise InferenceError(f"llama.cpp could not load the adapter {path}")
            self._adapters[key] = adapter
        return self._adapters[key]

    async def run_on_model_thread(self, action: Callable[[Any], Any]) -> Any:
        """Run `action(llama)` on the model thread after the requests queued before it."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._jobs.put(_Control(action, loop, done))
        return await done

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[Token | Completion, None]:
        if self._thread is None or not self.loaded.is_set() or self.load_error is not None:
            raise EngineNotReadyError("the model is not loaded")
        job = _Job(request, asyncio.get_running_loop(), asyncio.Queue())
        self._jobs.put(job)
        try:
            while True:
                item = await job.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Completion):
                    return
        finally:
            job.cancel.set()

    # --- the model thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._load()
        except Exception as exc:
            self.load_error = exc
            return
        finally:
            self.loaded.set()
        if self._scheduler is not None:
            self._scheduler.run()
        while self._scheduler is None and (job := self._jobs.get()) is not None:
            if isinstance(job, _Control):
                self._control(job)
            elif not job.cancel.is_set():
                self._serve(job)
        self._free_adapters()
        self._llm.close()

    def _free_adapters(self) -> None:
        from llama_cpp import llama_cpp as C

        C.llama_set_adapters_lora(self._llm._ctx.ctx, None, 0, None)
        for adapter in self._adapters.values():
            C.llama_adapter_lora_free(adapter)
        self._adapters.clear()

    def _load(self) -> None:
        from llama_cpp import Llama

        from agentloop.adapters.inference.llama_logs import route_llama_logs

        route_llama_logs()
        self._llm = Llama(
            model_path=str(self.model_path),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            n_batch=self.n_batch,
            verbose=False,
        )
        if self.max_parallel > 1:
            from agentloop.adapters.inference.batching import BatchScheduler

            self._parallel_context()
            self._scheduler = BatchScheduler(self)

    def _parallel_context(self) -> None:
        """Replace the Llama's one-sequence context by one for max_parallel sequences, each in its own KV
        stream of n_ctx cells (`kv_unified` off: a unified cache whose cells of one sequence end up out of
        position order gave different logits in llama.cpp 0.3.36, see ADR-0003)."""
        from llama_cpp import _internals

        llm = self._llm
        params = llm.context_params
        params.n_ctx = self.n_ctx * self.max_parallel
        params.n_seq_max = self.max_parallel
        params.kv_unified = False
        context = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        llm._ctx.close()
        llm._ctx = context
        llm._stack.callback(context.close)

    def _control(self, job: _Control) -> None:
        try:
            result = job.action(self._llm)
        except Exception as exc:
            job.loop.call_soon_threadsafe(_settle, job.done, None, exc)
        else:
            job.loop.call_soon_threadsafe(_settle, job.done, result, None)

    def _serve(self, job: _Job) -> None:
        try:
            job.emit(_Generation(self, job).run())
        except Exception as exc:
            error = (
                # A caller's mistake (context overflow, an unusable tool schema) stays a 4xx.
                exc if isinstance(exc, InferenceError | ValidationError) else InferenceError(str(exc))
            )
            job.emit(error)

    def grammar(self, constraint: OutputConstraint) -> Any:
        from llama_cpp.llama_grammar import LlamaGrammar

        key = json.dumps(
            [
                constraint.call_schema,
                constraint.call_prefix,
                constraint.call_suffix,
                constraint.allow_text,
                constraint.allow_call,
            ]
        )
        if key not in self._grammars:
            if len(self._grammars) > 64:
                self._grammars.clear()
            try:
                self._grammars[key] = LlamaGrammar.from_string(constraint_grammar(constraint), verbose=False)
            except Exception as exc:  # the converter asserts on schema features it does not support
                raise ValidationError(
                    f"a tool's parameters cannot be turned into a grammar: {exc}", field="tools"
                ) from exc
        return self._grammars[key]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Generation:
    """One request on the model thread: decide under the grammar, then continue freely."""

    # Off only for bench/: the full-vocabulary grammar of llama-cpp-python, as a baseline.
    greedy_grammar_check = True

    def __init__(self, engine: LlamaEngine, job: _Job) -> None:
        self.engine = engine
        self.llm = engine._llm
        self.job = job
        self.req = job.request
        self.out: list[int] = []
        self.text = ""
        self.shown = 0
        self.started = time.perf_counter()
        self.first_token_at: float | None = None
        self.finish = "length"
        self.cached_tokens = 0

    def run(self) -> Completion:
        prompt = self.engine._tokenize(self.req.prompt)
        if len(prompt) + self.req.max_tokens > self.engine.n_ctx:
            raise ContextOverflowError(len(prompt), self.engine.n_ctx - self.req.max_tokens)
        self._account(prompt)
        if self.req.seed is not None:
            self.llm.set_seed(self.req.seed)
        constraint = self.req.constraint
        grammar = self.engine.grammar(constraint) if constraint else None
        done = self._decode(prompt, grammar, switch_to_free=bool(constraint and constraint.allow_text))
        if not done:
            self._decode(prompt, None, switch_to_free=False)
        if self.job.cancel.is_set():
            self.finish = "cancelled"
        self._flush(final=True)
        return self._completion(len(prompt))

    def _account(self, prompt: list[int]) -> None:
        cached = 0
        for a, b in zip(self.llm._input_ids[: self.llm.n_tokens], prompt, strict=False):
            if a != b:
                break
            cached += 1
        stats = self.engine.stats
        stats["requests"] += 1
        stats["prompt_tokens"] += len(prompt)
        stats["cached_tokens"] += cached
        self.cached_tokens = cached

    def _decode(self, prompt: list[int], grammar: Any, switch_to_free: bool) -> bool:
        """Generate until done (True) or until the text branch is chosen and the grammar can go (False)."""
        from llama_cpp import LogitsProcessorList
        from llama_cpp import llama_cpp as C

        req = self.req
        vocab = self.llm._model.vocab
        checked = grammar is not None and not req.temperature and self.greedy_grammar_check
        greedy = _GreedyGrammar(self.llm, grammar, prompt) if checked else None
        try:
            for token in self.llm.generate(
                prompt + self.out,
                temp=req.temperature,
                top_p=req.top_p,
                top_k=0 if req.temperature else 1,
                min_p=0.0,
                repeat_penalty=1.0,
                reset=True,
                grammar=None if greedy else grammar,
                logits_processor=LogitsProcessorList([greedy]) if greedy else None,
            ):
                if greedy:
                    greedy.accept(token)
                if self.job.cancel.is_set():
                    return True
                if C.llama_vocab_is_eog(vocab, token):
                    self.finish = "stop"
                    return True
                self.out.append(token)
                if self._advance():
                    return True
                if len(self.out) >= req.max_tokens:
                    self.finish = "length"
                    return True
                if (
                    switch_to_free
                    and req.constraint
                    and not _may_be_call(self.text, req.constraint.call_prefix)
                ):
                    return False
            return True
        finally:
            if greedy:
                greedy.close()

    def _advance(self) -> bool:
        """Decode the new token, emit what is safe to show, and report whether a stop sequence ended it."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.text = self.llm.detokenize(self.out, special=True).decode("utf-8", errors="ignore")
        # A stop sequence ends the reply only once it has content: leading newlines are not an answer.
        start = len(self.text) - len(self.text.lstrip())
        for stop in self.req.stop:
            index = self.text.find(stop, start)
            if index >= 0:
                self.text = self.text[:index]
                self.finish = "stop"
                return True
        self._flush(final=False)
        return False

    def _flush(self, final: bool) -> None:
        limit = len(self.text) if final else len(self.text) - _held_back(self.text, self.req.stop)
        if limit > self.shown:
            self.job.emit(Token(self.text[self.shown : limit]))
            self.shown = limit

    def _completion(self, prompt_tokens: int) -> Completion:
        now = time.perf_counter()
        first = self.first_token_at or now
        return Completion(
            text=self.text,
            usage=Usage(prompt_tokens, len(self.out)),
            finish_reason=self.finish,
            model_version=self.engine.model_version,
            duration_ms=(now - self.started) * 1000.0,
            ttft_ms=(first - self.started) * 1000.0,
            extra={"cached_tokens": self.cached_tokens},
        )


# A constrained call that loops ("17 * 1000000000000...", "24 * 60 * 60 * 60 * ...", the same date again and
# again) runs to max_tokens and ends as a wrong or unparseable call; trained versions did this in the learning
# runs (bench/results/improve/runs.md). The grammar may keep looping forever, so the engine refuses the token
# that would extend a loop: the last max(LOOP_SPAN, 3 * period) tokens repeating with a period of up to
# LOOP_MAX_PERIOD tokens. Twelve identical tokens (a digit, a space) or three copies of a chunk pass; the next
# copy does not, unless the prompt holds the same run (a long number the call copies from the question).
LOOP_SPAN = 12
LOOP_MAX_PERIOD = 16


def loop_continuation(tokens: Sequence[int], prompt: Sequence[int] = ()) -> int | None:
    """The token that would extend a loop at the end of `tokens`, or None when they do not end in one (or
    when the prompt holds that run and the token after it)."""
    n = len(tokens)
    for period in range(1, LOOP_MAX_PERIOD + 1):
        span = max(LOOP_SPAN, 3 * period)
        if span > n:
            break
        if all(tokens[n - i] == tokens[n - i - period] for i in range(1, span - period + 1)):
            token = tokens[n - period]
            run = span  # the whole periodic tail, then the token that would extend it
            while run < n and tokens[n - run - 1] == tokens[n - run - 1 + period]:
                run += 1
            return None if _contains(prompt, [*tokens[n - run :], token]) else token
    return None


def _contains(haystack: Sequence[int], needle: list[int]) -> bool:
    first, size = needle[0], len(needle)
    return any(
        haystack[start] == first and list(haystack[start : start + size]) == needle
        for start in range(len(haystack) - size + 1)
    )


class _GreedyGrammar:
    """Grammar enforcement for greedy decoding as a logits processor: check only the token greedy decoding
    would pick, and run the grammar over the whole 262k vocabulary only when that token is rejected (what
    llama.cpp's own common sampler does). Same tokens as the full check, about 3x faster tool calls
    (bench/results/grammar.json). The batched engine samples with temperature > 0 the same way (`Draw`); the
    one-sequence path keeps llama-cpp-python's full grammar there."""

    def __init__(self, llm: Any, grammar: Any, prompt: Sequence[int] = ()) -> None:
        from llama_cpp import llama_cpp as C

        self._c = C
        self._sampler = C.llama_sampler_init_grammar(
            llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        self._one = (C.llama_token_data * 1)()
        self.full_checks = 0
        self.prompt = prompt  # the loop guard lets the call copy a run the prompt holds
        self.tokens: list[int] = []  # accepted so far, for the loop guard

    def __call__(self, input_ids: Any, logits: Any) -> Any:
        logits = self.guard(logits)
        if self.allows(int(logits.argmax()), logits):
            return logits
        return self.mask(logits)

    def guard(self, logits: Any) -> Any:
        """The logits without the token that would extend a loop (a copy), or as they are when there is none
        or when the grammar allows nothing else. When the best remaining token is not allowed either, the
        copy comes back already masked (the whole-vocabulary pass, done once), so callers take its argmax
        or draw from it without checking again."""
        import numpy as np

        token = loop_continuation(self.tokens, self.prompt)
        if token is None:
            return logits
        guarded = np.array(logits, dtype=np.single)
        guarded[token] = -np.inf
        if self.allows(int(guarded.argmax()), guarded):
            return guarded
        masked = self.mask(guarded)
        # Nothing allowed but the loop's token: there is no way out of it here.
        return masked if np.isfinite(masked.max()) else logits

    def allows(self, token: int, logits: Any) -> bool:
        """Whether the grammar, in its current state, accepts `token` next (a one-candidate check)."""
        C = self._c
        self._one[0] = C.llama_token_data(token, float(logits[token]), 0.0)
        single = C.llama_token_data_array(self._one, 1, -1, False)
        C.llama_sampler_apply(self._sampler, ctypes.byref(single))
        return not math.isinf(self._one[0].logit)

    def mask(self, logits: Any) -> Any:
        """The logits with every token the grammar rejects set to -inf (the whole-vocabulary pass)."""
        import numpy as np

        C = self._c
        self.full_checks += 1
        n = len(logits)
        data = (C.llama_token_data * n)()
        view = np.ctypeslib.as_array(data).view(
            np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        )
        view["id"], view["logit"] = np.arange(n, dtype=np.intc), logits
        every = C.llama_token_data_array(data, n, -1, False)
        C.llama_sampler_apply(self._sampler, ctypes.byref(every))
        return view["logit"].copy()

    def accept(self, token: int) -> None:
        self._c.llama_sampler_accept(self._sampler, token)
        self.tokens.append(token)

    def close(self) -> None:
        self._c.llama_sampler_free(self._sampler)


class Draw:
    """Sampling with temperature from a logits row, as llama.cpp's chain does it (nucleus on the raw
    probabilities, then temperature, then a seeded draw), for a grammar checked like `_GreedyGrammar`: draw,
    and only when the grammar rejects the token draw again from the logits it allows. Accepting a valid draw
    and otherwise drawing from the allowed tokens gives exactly the constrained distribution, while the
    262k-vocabulary grammar pass runs only for rejected draws."""

    CANDIDATES = 512  # the nucleus is looked for among the most likely tokens first

    def __init__(self, temperature: float, top_p: float, seed: int | None) -> None:
        import numpy as np

        self.temperature = temperature
        self.top_p = top_p
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: Any) -> int:
        import numpy as np

        row = np.asarray(logits, dtype=np.float64)
        top = min(self.CANDIDATES, len(row))
        candidates = np.argpartition(-row, top - 1)[:top]
        candidates = candidates[np.argsort(-row[candidates], kind="stable")]
        if not np.isfinite(row[candidates[0]]):
            raise InferenceError("no token is allowed here")
        shifted = row - row[candidates[0]]
        weights = np.exp(shifted)  # -inf (rejected by the grammar) becomes 0
        total = weights.sum()
        if self.top_p < 1.0:
            cumulative = np.cumsum(weights[candidates]) / total
            if cumulative[-1] >= self.top_p:
                kept = candidates[: int(np.searchsorted(cumulative, self.top_p)) + 1]
            else:  # a flat distribution: the nucleus is wider than the candidates, sort them all
                order = np.argsort(-row, kind="stable")
                cumulative = np.cumsum(weights[order]) / total
                kept = order[: int(np.searchsorted(cumulative, self.top_p)) + 1]
        else:
            kept = np.flatnonzero(weights > 0)
        scaled = np.exp(shifted[kept] / self.temperature)
        return int(kept[self.rng.choice(len(kept), p=scaled / scaled.sum())])

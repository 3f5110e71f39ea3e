"""Continuous batching for the embedded engine: several sequences decoded together in one `llama_decode` call.

The model thread runs a loop of steps. Each step feeds the last sampled token of every active sequence into
one llama.cpp batch (a distinct `seq_id` per sequence, each with its own KV stream of n_ctx cells) and
samples every sequence from its own row of logits, with its own grammar, temperature, seed and stop strings.
Between steps, queued requests join: a request is placed on the free sequence slot whose cells hold the
longest prefix of its prompt (the tail after it is dropped with `llama_memory_seq_rm`), and its prompt
remainder is prefilled in its own `llama_decode` calls. Finished or cancelled sequences leave at once; their
cells stay as a prefix cache until the slot is reused. Slots do not share cells: with separate streams
llama.cpp copies only whole streams, and a unified cache gave wrong logits once a sequence's cells were out
of position order (ADR-0003).

Control actions (adapter swaps, `run_on_model_thread`) are barriers: llama.cpp applies a LoRA adapter to the
whole context, so a control waits until the sequences admitted before it have finished, and requests queued
after it wait for it. In-flight requests therefore finish on the old version and new ones use the new one.
"""

from __future__ import annotations

import ctypes
import queue
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentloop.errors import ContextOverflowError, InferenceError

if TYPE_CHECKING:
    from agentloop.adapters.inference.llama import LlamaEngine, _Control, _Job


@dataclass
class _Slot:
    """One llama.cpp sequence id and the tokens its KV cells hold (position i holds tokens[i])."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    busy: bool = False


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class BatchScheduler:
    """Owns the llama.cpp context on the model thread when the engine serves more than one sequence."""

    def __init__(self, engine: LlamaEngine) -> None:
        from llama_cpp import llama_cpp as C

        self.C = C
        self.engine = engine
        self.llm = engine._llm
        self.ctx = self.llm._ctx.ctx
        self.memory = C.llama_get_memory(self.ctx)
        self.vocab = self.llm._model.vocab
        self.n_vocab = int(C.llama_vocab_n_tokens(self.vocab))
        self.n_swa = max(1, int(C.llama_model_n_swa(self.llm._model.model)))
        self.slots = [_Slot(i) for i in range(engine.max_parallel)]
        self.active: list[_Sequence] = []
        self.waiting: deque[_Job | _Control] = deque()
        self.closing = False
        self.batch = C.llama_batch_init(max(engine.n_batch, engine.max_parallel), 0, 1)

    # --- the loop ------------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while True:
                self._take(block=not self.active and not self.waiting)
                try:
                    self._admit()
                    if self.active:
                        self._step()
                except Exception as exc:  # no request may hang on an unexpected failure
                    self._fail_active(InferenceError(f"the batched engine failed: {exc}"))
                if not self.active and self.closing and not self.waiting:
                    return
        finally:
            for seq in self.active:
                seq.release()
            self.C.llama_batch_free(self.batch)

    def _take(self, block: bool) -> None:
        """Move newly submitted work into `waiting`, in order; `None` (close) is a barrier like a control."""
        if self.closing:
            return
        while True:
            try:
                item = self.engine._jobs.get() if block else self.engine._jobs.get_nowait()
            except queue.Empty:
                return
            block = False
            if item is None:
                self.closing = True
                return
            self.waiting.append(item)

    def _admit(self) -> None:
        from agentloop.adapters.inference.llama import _Control

        while self.waiting:
            head = self.waiting[0]
            if isinstance(head, _Control):
                if self.active:
                    return  # a barrier: the sequences admitted before it finish first
                self.waiting.popleft()
                self.engine._control(head)
                continue
            if head.cancel.is_set():
                self.waiting.popleft()
                continue
            if all(slot.busy for slot in self.slots):
                return
            self.waiting.popleft()
            self._start(head)

    def forget(self) -> None:
        """The KV cache was cleared (adapter swap): no slot holds a reusable prefix any more."""
        for slot in self.slots:
            slot.tokens.clear()

    # --- joining: placement, prefix reuse, prefill ---------------------------------------------------------

    def _start(self, job: _Job) -> None:
        seq = _Sequence(self, job)
        slot: _Slot | None = None
        try:
            prompt = self.engine._tokenize(job.request.prompt)
            if len(prompt) + job.request.max_tokens > self.engine.n_ctx:
                raise ContextOverflowError(len(prompt), self.engine.n_ctx - job.request.max_tokens)
            slot, reused = self._place(prompt)
            slot.busy = True
            stats = self.engine.stats
            stats["requests"] += 1
            stats["prompt_tokens"] += len(prompt)
            stats["cached_tokens"] += reused
            seq.text_state.cached_tokens = reused  # reported in the completion (and the cache-hit metric)
            seq.begin(slot, prompt)
            last = self._prefill(slot, prompt[reused:])
            self.active.append(seq)
            seq.sampled(seq.sample(last))
        except Exception as exc:
            if seq in self.active:
                self.active.remove(seq)
            seq.release()
            if slot is not None:
                self._clear(slot)
                slot.busy = False
            job.emit(_as_inference_error(exc))
            return
        if seq.done:
            self._finish(seq)

    def _place(self, prompt: list[int]) -> tuple[_Slot, int]:
        """The free slot whose cells hold the longest prefix of `prompt` (on a tie the emptiest, so cached
        prefixes survive longest), and that prefix's length."""
        limit = len(prompt) - 1  # at least one token is evaluated, for fresh logits
        free = [slot for slot in self.slots if not slot.busy]
        matches = {slot.seq_id: min(common_prefix(slot.tokens, prompt), limit) for slot in free}
        # A match of the BOS token alone is worth nothing: take an empty slot before evicting a cached one.
        target = max(free, key=lambda s: (matches[s.seq_id] if matches[s.seq_id] > 1 else 0, -len(s.tokens)))
        reused = matches[target.seq_id]
        if reused <= 1:
            reused = 0  # a fresh prefill of the whole prompt, the same kernels as on an empty slot
        if reused < len(target.tokens):
            if not self.C.llama_memory_seq_rm(self.memory, target.seq_id, reused, -1):
                reused = 0
                self._clear(target)
            del target.tokens[reused:]
        if reused > 0:
            # Sliding-window layers keep only the last n_swa positions: the reused prefix must end inside.
            pos_min = int(self.C.llama_memory_seq_pos_min(self.memory, target.seq_id))
            if pos_min < 0 or pos_min > max(0, reused - self.n_swa):
                reused = 0
                self._clear(target)
        return target, reused

    def _clear(self, slot: _Slot) -> None:
        self.C.llama_memory_seq_rm(self.memory, slot.seq_id, -1, -1)
        slot.tokens.clear()

    def _prefill(self, slot: _Slot, tokens: list[int]) -> int:
        """Evaluate `tokens` after the slot's cells, n_batch at a time; the index of the last logits row."""
        step = self.engine.n_batch
        last = 0
        for start in range(0, len(tokens), step):
            chunk = tokens[start : start + step]
            base = len(slot.tokens)
            for i, token in enumerate(chunk):
                self._put(i, token, base + i, slot.seq_id, logits=start + i == len(tokens) - 1)
            self._decode(len(chunk))
            slot.tokens.extend(chunk)
            last = len(chunk) - 1
        return last

    def _put(self, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        batch = self.batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq_id
        batch.logits[i] = logits

    def _decode(self, n: int) -> None:
        self.batch.n_tokens = n
        code = self.C.llama_decode(self.ctx, self.batch)
        if code != 0:
            raise InferenceError(f"llama_decode failed (code {code}) for a batch of {n} tokens")

    # --- one step: a token for every active sequence --------------------------------------------------------

    def _step(self) -> None:
        for seq in [s for s in self.active if s.job.cancel.is_set()]:
            self._finish(seq)
        if not self.active:
            return
        batch = list(self.active)
        for i, seq in enumerate(batch):
            self._put(i, seq.next_token, len(seq.slot.tokens), seq.slot.seq_id, logits=True)
        try:
            self._decode(len(batch))
        except InferenceError as exc:
            self._fail_active(exc)
            return
        stats = self.engine.stats
        stats["batch_steps"] = stats.get("batch_steps", 0) + 1
        stats["max_batch"] = max(stats.get("max_batch", 0), len(batch))
        for i, seq in enumerate(batch):
            seq.slot.tokens.append(seq.next_token)
            try:
                seq.sampled(seq.sample(i))
            except Exception as exc:
                seq.fail(_as_inference_error(exc))
                self.active.remove(seq)
                seq.slot.busy = False
                continue
            if seq.done:
                self._finish(seq)

    def _fail_active(self, error: BaseException) -> None:
        """The cells of this step are in an unknown state: drop every sequence's cache and fail the active."""
        for seq in self.active:
            seq.fail(error)
        self.active.clear()
        self.C.llama_memory_clear(self.memory, True)
        for slot in self.slots:
            slot.tokens.clear()
            slot.busy = False

    def _finish(self, seq: _Sequence) -> None:
        self.active.remove(seq)
        seq.slot.busy = False
        seq.complete()


def _as_inference_error(exc: BaseException) -> BaseException:
    return exc if isinstance(exc, InferenceError | ContextOverflowError) else InferenceError(str(exc))


class _Sequence:
    """One request inside the batch: its sampler state and the text logic shared with the serialized path."""

    def __init__(self, scheduler: BatchScheduler, job: _Job) -> None:
        from agentloop.adapters.inference.llama import _Generation

        self.scheduler = scheduler
        self.job = job
        self.req = job.request
        self.text_state = _Generation(scheduler.engine, job)
        self.slot: _Slot = scheduler.slots[0]
        self.prompt_tokens = 0
        self.next_token = 0
        self.done = False
        self.chain: Any = None  # a llama.cpp sampler chain (temperature, or the full-vocabulary grammar)
        self.greedy: Any = None  # the checked grammar (only the chosen token, whole vocabulary if rejected)
        self.draw: Any = None  # sampling with temperature under a checked grammar
        self.switch_to_free = False

    def begin(self, slot: _Slot, prompt: list[int]) -> None:
        self.slot = slot
        self.prompt_tokens = len(prompt)
        constraint = self.req.constraint
        grammar = self.scheduler.engine.grammar(constraint) if constraint else None
        self.switch_to_free = bool(grammar is not None and constraint and constraint.allow_text)
        self._samplers(grammar, prompt)

    def _samplers(self, grammar: Any, prompt: list[int] | None = None) -> None:
        from agentloop.adapters.inference.llama import Draw, _Generation, _GreedyGrammar

        C = self.scheduler.C
        req = self.req
        if grammar is not None and _Generation.greedy_grammar_check:
            self.greedy = _GreedyGrammar(self.scheduler.llm, grammar, prompt or ())
            if req.temperature:
                self.draw = Draw(req.temperature, req.top_p, req.seed)
            return
        if grammar is None and not req.temperature:
            return  # plain greedy: the argmax of the logits row
        # The same chain llama-cpp-python builds for the serialized path, so a seed gives the same tokens.
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        if grammar is not None:
            C.llama_sampler_chain_add(
                chain,
                C.llama_sampler_init_grammar(
                    self.scheduler.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
                ),
            )
        if req.temperature:
            seed = req.seed if req.seed is not None else C.LLAMA_DEFAULT_SEED
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_top_k(0))
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_typical(1.0, 1))
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_top_p(req.top_p, 1))
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_min_p(0.0, 1))
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_temp(req.temperature))
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        else:
            C.llama_sampler_chain_add(chain, C.llama_sampler_init_greedy())
        self.chain = chain

    def sample(self, index: int) -> int:
        """The next token from row `index` of the last batch's logits."""
        import numpy as np

        C = self.scheduler.C
        if self.chain is not None:
            return int(C.llama_sampler_sample(self.chain, self.scheduler.ctx, index))
        pointer = C.llama_get_logits_ith(self.scheduler.ctx, index)
        logits = np.ctypeslib.as_array(
            ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), (self.scheduler.n_vocab,)
        )
        if self.draw is not None:
            logits = self.greedy.guard(logits)
            token = int(self.draw(logits))
            if not self.greedy.allows(token, logits):
                token = int(self.draw(self.greedy.mask(logits)))
            self.greedy.accept(token)
            return token
        if self.greedy is not None:
            logits = self.greedy(None, logits)
        token = int(logits.argmax())
        if self.greedy is not None:
            self.greedy.accept(token)
        return token

    def sampled(self, token: int) -> None:
        """Take a sampled token: the same checks, in the same order, as the serialized `_decode` loop."""
        from agentloop.adapters.inference.llama import _may_be_call

        state = self.text_state
        if self.job.cancel.is_set():
            self.done = True
            return
        if self.scheduler.C.llama_vocab_is_eog(self.scheduler.vocab, token):
            state.finish = "stop"
            self.done = True
            return
        state.out.append(token)
        if state._advance():
            self.done = True
            return
        if len(state.out) >= self.req.max_tokens:
            state.finish = "length"
            self.done = True
            return
        constraint = self.req.constraint
        if self.switch_to_free and constraint and not _may_be_call(state.text, constraint.call_prefix):
            # The text branch was chosen: the rest is free text (the serialized path restarts its sampler
            # without the grammar, and so does this one).
            self.switch_to_free = False
            self.release()
            self._samplers(None)
        self.next_token = token

    def complete(self) -> None:
        state = self.text_state
        if self.job.cancel.is_set():
            state.finish = "cancelled"
        self.release()
        state._flush(final=True)
        self.job.emit(state._completion(self.prompt_tokens))

    def fail(self, error: BaseException) -> None:
        self.release()
        self.job.emit(error)

    def release(self) -> None:
        if self.chain is not None:
            self.scheduler.C.llama_sampler_free(self.chain)
            self.chain = None
        if self.greedy is not None:
            self.greedy.close()
            self.greedy = None
        self.draw = None

"""A proposed change to src/agentloop/adapters/inference/llama.py, measured beside the current code.

llama.cpp's grammar sampler checks every one of Gemma's 262,144 vocabulary entries against the grammar for
every constrained token. With greedy decoding the result is the same if we first take the token greedy
decoding would pick, check only that one (a 1-entry candidate array), and apply the grammar to the whole
vocabulary only when it is rejected: llama.cpp's own common sampler does this ("grammar_first = false").
`LazyGrammar` does it as a llama-cpp-python logits processor, so `Llama.generate` (prefix reuse, eval)
stays as it is. Sampling with temperature > 0 keeps the full grammar: the processor cannot know which token
the distribution sampler will draw.

`LazyGrammarEngine` is LlamaEngine with `_Generation._decode` replaced by the proposed version; the
bench's grammar benchmark runs it as a third arm. Keep `_decode` below in step with src when it changes.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import numpy as np

from agentloop.adapters.inference.llama import LlamaEngine, _Generation, _Job, _may_be_call


class LazyGrammar:
    """A logits processor that enforces a GBNF grammar by checking only the greedy choice when it can."""

    def __init__(self, llm: Any, grammar: Any) -> None:
        from llama_cpp import llama_cpp as C

        self._c = C
        self._sampler = C.llama_sampler_init_grammar(
            llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        self._one = (C.llama_token_data * 1)()
        self.full_checks = 0

    def __call__(self, input_ids: Any, logits: np.ndarray) -> np.ndarray:
        C = self._c
        best = int(logits.argmax())
        self._one[0] = C.llama_token_data(best, float(logits[best]), 0.0)
        single = C.llama_token_data_array(self._one, 1, -1, False)
        C.llama_sampler_apply(self._sampler, ctypes.byref(single))
        if not math.isinf(self._one[0].logit):
            return logits
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

    def close(self) -> None:
        self._c.llama_sampler_free(self._sampler)


class _LazyGeneration(_Generation):
    def _decode(self, prompt: list[int], grammar: Any, switch_to_free: bool) -> bool:
        """Proposed replacement of `_Generation._decode`: differences marked `# lazy`."""
        from llama_cpp import LogitsProcessorList
        from llama_cpp import llama_cpp as C

        req = self.req
        vocab = self.llm._model.vocab
        lazy = LazyGrammar(self.llm, grammar) if grammar is not None and not req.temperature else None  # lazy
        try:
            for token in self.llm.generate(
                prompt + self.out,
                temp=req.temperature,
                top_p=req.top_p,
                top_k=0 if req.temperature else 1,
                min_p=0.0,
                repeat_penalty=1.0,
                reset=True,
                grammar=None if lazy else grammar,  # lazy
                logits_processor=LogitsProcessorList([lazy]) if lazy else None,  # lazy
            ):
                if lazy:  # lazy
                    lazy.accept(token)
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
            if lazy:  # lazy
                lazy.close()


class LazyGrammarEngine(LlamaEngine):
    """LlamaEngine that runs the proposed decode loop while `lazy` is set, the current one otherwise."""

    lazy = False

    def _serve(self, job: _Job) -> None:
        if not self.lazy:
            super()._serve(job)
            return
        try:
            job.emit(_LazyGeneration(self, job).run())
        except Exception as exc:
            job.emit(exc)

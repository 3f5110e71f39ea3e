"""The baseline for the grammar benchmark: llama-cpp-python's own full-vocabulary grammar sampling, which our
engine used before it switched to checking only the greedy token (src/agentloop/adapters/inference/llama.py,
`_GreedyGrammar`). `LazyGrammarEngine.lazy = True` runs our engine as it is; `False` runs the baseline."""

from __future__ import annotations

from agentloop.adapters.inference.llama import LlamaEngine, _Generation, _Job


class _FullGrammarGeneration(_Generation):
    greedy_grammar_check = False


class LazyGrammarEngine(LlamaEngine):
    """Our engine while `lazy` is set; the full-grammar baseline otherwise."""

    lazy = False

    def _serve(self, job: _Job) -> None:
        if self.lazy:
            super()._serve(job)
            return
        try:
            job.emit(_FullGrammarGeneration(self, job).run())
        except Exception as exc:
            job.emit(exc)

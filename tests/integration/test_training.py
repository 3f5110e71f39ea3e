"""LoRA training on the real Gemma 3 270M (de-quantized from the bundled GGUF), its export to a llama.cpp
adapter, checkpoints, resume, cancellation and the subprocess runner.

Kept tiny for 2 shared CPU cores: 6 examples, batches of 2, a few steps each. The first session on a machine
de-quantizes the GGUF (~100-180 s, cached under AGENTLOOP_CACHE_DIR/hf); later ones start in seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from agentloop.adapters.model_files import ModelFile
from agentloop.adapters.tools.calculator import calculator_tool
from agentloop.adapters.training import TrainResult, TrainSpec, run_training_process
from agentloop.application.prompt import END, render_prompt, render_tool_call
from agentloop.domain.model import DEFAULT_SYSTEM_PROMPT, Message, Role, ToolCall
from conftest import model_cache_dir

pytestmark = [pytest.mark.model, pytest.mark.training, pytest.mark.timeout(900)]

THREADS = 1  # 2 shared cores: a second torch thread waiting on a busy core makes steps several times slower
QUESTIONS = (
    ("What is 12 * 7?", "12 * 7"),
    ("How much is 345 + 678?", "345 + 678"),
    ("Compute 2 to the power of 10.", "2 ** 10"),
    ("What is 81 divided by 9?", "81 / 9"),
    ("Subtract 17 from 100.", "100 - 17"),
    ("What is the square root of 144?", "sqrt(144)"),
)
UNSEEN = ("What is 99 - 45?", "Multiply 6 by 13.")
NEW_TOKENS = 24


def prompt_for(question: str) -> str:
    tools = [calculator_tool(5.0)]
    return render_prompt(
        DEFAULT_SYSTEM_PROMPT, tools, [Message("", Role.USER, question)], with_examples=False
    )


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("dataset")
    rows = [
        {
            "prompt": prompt_for(question),
            "completion": render_tool_call(ToolCall("calculator", {"expression": expr})) + f"\n{END}",
            "source": "test",
        }
        for question, expr in QUESTIONS
    ]
    train, validation = folder / "train.jsonl", folder / "validation.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    validation.write_text("".join(json.dumps(row) + "\n" for row in rows[:2]))
    return train, validation


@pytest.fixture(scope="session")
def hf_base(model_file: ModelFile) -> Path:
    """The de-quantized base: ~100-180 s the first time on a machine, milliseconds afterwards."""
    from agentloop.adapters.training.base_model import prepare_base

    return prepare_base(model_file.path, model_file.sha256, model_cache_dir())


@pytest.fixture(scope="session")
def spec_for(model_file: ModelFile, hf_base: Path, dataset: tuple[Path, Path]) -> Any:
    def make(output_dir: Path, **changes: Any) -> TrainSpec:
        spec = TrainSpec(
            base=model_file.path,
            base_sha256=model_file.sha256,
            train_file=dataset[0],
            validation_file=dataset[1],
            output_dir=output_dir,
            cache_dir=model_cache_dir(),
            max_steps=4,
            batch_size=2,
            learning_rate=1e-3,  # high on purpose: 4 steps must visibly change what the model says
            max_seq_len=256,
            checkpoint_every=2,
            threads=THREADS,
        )
        return dataclasses.replace(spec, **changes)

    return make


@pytest.fixture(scope="session")
def trained(
    spec_for: Any, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainSpec, TrainResult, list[dict]]:
    from agentloop.adapters.training.lora import train_lora

    spec = spec_for(tmp_path_factory.mktemp("trained"))
    events: list[dict[str, Any]] = []
    return spec, train_lora(spec, events.append), events


def test_training_lowers_a_finite_loss_and_reports_progress(trained: tuple) -> None:
    _, result, events = trained
    assert result.status == "completed"
    assert result.steps == 4
    assert [e["step"] for e in events] == [1, 2, 3, 4]
    assert all(math.isfinite(e["loss"]) for e in events)
    assert result.first_train_loss is not None and result.last_train_loss is not None
    assert result.last_train_loss < result.first_train_loss
    assert result.validation_loss is not None and math.isfinite(result.validation_loss)
    assert set(events[-1]) >= {"step", "max_steps", "loss", "tokens_per_s", "eta_s", "epoch"}
    assert events[-1]["epoch"] == pytest.approx(4 / 3, abs=1e-3)
    assert result.tokens_seen > 0 and result.tokens_per_s > 0 and result.peak_rss_mb > 0
    assert (result.device, result.qlora) == ("cpu", False)
    assert result.peft_dir is not None and (result.peft_dir / "adapter_model.safetensors").is_file()


def test_export_writes_a_llama_cpp_lora_adapter(trained: tuple) -> None:
    import gguf

    from agentloop.adapters.model_files import sha256_of

    _, result, _ = trained
    assert result.gguf_adapter is not None and result.adapter_sha256 == sha256_of(result.gguf_adapter)
    reader = gguf.GGUFReader(result.gguf_adapter)
    fields = {name: reader.fields[name].contents() for name in ("general.architecture", "general.type")}
    assert fields == {"general.architecture": "gemma3", "general.type": "adapter"}
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 32.0
    tensors = {tensor.name: tensor.data.shape for tensor in reader.tensors}
    assert len(tensors) == 18 * 7 * 2
    # llama.cpp's layout (numpy order): lora_a [r, in], lora_b [out, r]; q_proj is 640 -> 4 heads x 256.
    assert tensors["blk.0.attn_q.weight.lora_a"] == (16, 640)
    assert tensors["blk.0.attn_q.weight.lora_b"] == (1024, 16)
    assert tensors["blk.17.ffn_down.weight.lora_a"] == (16, 2048)


def _hf_greedy(model: Any, tokenizer: Any, prompt: str, stop: list[int]) -> tuple[list[int], list[int]]:
    import torch

    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=stop)
    return ids[0].tolist(), out[0, ids.shape[1] :].tolist()


def _llama_greedy(llm: Any, prompt: str, stop: list[int]) -> tuple[list[int], list[int]]:
    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    out: list[int] = []
    for token in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
        out.append(token)
        if token in stop or len(out) == NEW_TOKENS:
            break
    return tokens, out


def test_llama_cpp_with_the_exported_adapter_decodes_like_hf_peft(
    trained: tuple, model_file: ModelFile, hf_base: Path
) -> None:
    import llama_cpp
    import torch
    from peft import PeftModel

    from agentloop.adapters.training.base_model import load_base

    spec, result, _ = trained
    torch.set_num_threads(THREADS)
    base, tokenizer = load_base(hf_base, "cpu", quantize_4bit=False)
    stop = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END)]
    tuned = PeftModel.from_pretrained(base, spec.peft_dir).eval()
    prompts = [prompt_for(question) for question in UNSEEN]
    hf_tuned = [_hf_greedy(tuned, tokenizer, p, stop) for p in prompts]
    with tuned.disable_adapter():
        hf_base_out = [_hf_greedy(tuned, tokenizer, p, stop) for p in prompts]
    gguf_path = str(model_file.path)
    plain = llama_cpp.Llama(model_path=gguf_path, n_ctx=512, n_threads=THREADS, verbose=False)
    adapted = llama_cpp.Llama(
        model_path=gguf_path, lora_path=str(result.gguf_adapter), n_ctx=512, n_threads=THREADS, verbose=False
    )
    llama_tuned = [_llama_greedy(adapted, p, stop) for p in prompts]
    llama_base = [_llama_greedy(plain, p, stop) for p in prompts]

    assert [ids for ids, _ in hf_tuned] == [ids for ids, _ in llama_tuned], "prompts tokenize differently"
    assert [out for _, out in hf_tuned] == [out for _, out in llama_tuned]
    assert [out for _, out in hf_base_out] == [out for _, out in llama_base]
    assert [out for _, out in hf_tuned] != [out for _, out in hf_base_out], "the adapter changed nothing"
    for _, out in llama_tuned:
        assert tokenizer.decode(out).startswith('<tool_call>{"name": "calculator"')


class Crash(Exception):
    pass


@pytest.mark.slow
def test_a_crashed_run_resumes_from_its_checkpoint_to_the_same_adapter(
    trained: tuple, spec_for: Any, tmp_path: Path
) -> None:
    from safetensors.numpy import load_file

    from agentloop.adapters.training.lora import train_lora

    spec = spec_for(tmp_path / "run")

    def crash_at_step_3(progress: dict[str, Any]) -> None:
        if progress["step"] == 3:
            raise Crash

    with pytest.raises(Crash):
        train_lora(spec, crash_at_step_3)
    assert [p.name for p in spec.checkpoints_dir.iterdir()] == ["step-2"]

    events: list[dict[str, Any]] = []
    resumed = train_lora(spec, events.append)
    assert (resumed.status, resumed.steps, resumed.resumed_from_step) == ("completed", 4, 2)
    assert [e["step"] for e in events] == [3, 4]
    _, uninterrupted, _ = trained
    assert resumed.first_train_loss == pytest.approx(uninterrupted.first_train_loss)
    assert resumed.last_train_loss == pytest.approx(uninterrupted.last_train_loss, rel=1e-4)
    ours = load_file(spec.peft_dir / "adapter_model.safetensors")
    theirs = load_file(uninterrupted.peft_dir / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        assert value == pytest.approx(theirs[name], rel=1e-4, abs=1e-6), name


def test_should_stop_cancels_after_a_checkpoint(spec_for: Any, tmp_path: Path) -> None:
    from agentloop.adapters.training.lora import train_lora

    # Short sequences (the end of the prompt and the whole completion): the steps only have to happen.
    spec = spec_for(tmp_path / "run", checkpoint_every=100, max_seq_len=64)
    polls = iter([False, False, True])
    result = train_lora(spec, should_stop=lambda: next(polls))
    assert (result.status, result.steps) == ("cancelled", 2)
    assert result.peft_dir is None and result.gguf_adapter is None
    assert [p.name for p in spec.checkpoints_dir.iterdir()] == ["step-2"]
    assert not spec.peft_dir.exists()


@pytest.mark.slow
async def test_the_training_process_streams_progress_cancels_on_sigterm_and_resumes(
    spec_for: Any, tmp_path: Path
) -> None:
    spec = spec_for(tmp_path / "run", max_steps=3, checkpoint_every=100)
    first_step = asyncio.Event()
    progress: list[dict[str, Any]] = []

    def on_progress(event: dict[str, Any]) -> None:
        progress.append(event)
        first_step.set()

    task = asyncio.create_task(run_training_process(spec, on_progress))
    await asyncio.wait_for(first_step.wait(), 600)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    saved = [p.name for p in spec.checkpoints_dir.iterdir()]
    assert saved in (["step-1"], ["step-2"])

    result = await run_training_process(spec, progress.append)
    assert (result.status, result.steps) == ("completed", 3)
    assert result.resumed_from_step == int(saved[0].removeprefix("step-"))
    assert [e["step"] for e in progress][-1] == 3
    assert result.gguf_adapter is not None and result.gguf_adapter.is_file()


async def test_a_failing_training_process_raises_training_error(spec_for: Any, tmp_path: Path) -> None:
    from agentloop.adapters.training import TrainingError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "only a prompt"}\n')
    spec = spec_for(tmp_path / "run", train_file=bad)
    with pytest.raises(TrainingError, match=r"bad\.jsonl:1"):
        await run_training_process(spec)

"""One arm of the training benchmark, in its own process (so peak RSS is its own):
`python -m bench.train_arm ours|plain SPEC_JSON` prints one line `RESULT {json}`.

- ours: `agentloop.adapters.training.lora.train_lora(spec)`, the trainer the learning loop runs.
- plain: what a user without our trainer writes: transformers `Trainer` + PEFT `get_peft_model` with the same
  LoRA config, the same base weights, data, batch size, steps, learning-rate schedule, seed and threads;
  standard tokenization (prompt with BOS + completion, labels -100 on the prompt) and a padding collator.
Tokens/s in both counts the real (non-padding) tokens of the batches trained on, over the time spent in
optimizer steps (forward, backward, clipping, optimizer), not model loading or data preparation.

On CUDA (the spec's `device` "cuda", as `bench/gpu_training.py` writes it) the plain arm loads the base in
bf16 and trains with `bf16=True`; step times are taken after `torch.cuda.synchronize()`, and both arms report
per-step tokens and seconds (`step_tokens`, `step_times_s`) and the process's peak CUDA memory. Options of
the benchmark's own travel under the spec's "bench" key, which the ours arm drops (TrainSpec refuses it).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _bitsandbytes_status() -> str:
    """'ok <version>' or why bitsandbytes does not import (train_lora then falls back to bf16 LoRA)."""
    try:
        import bitsandbytes

        return f"ok {getattr(bitsandbytes, '__version__', '?')}"
    except Exception as exc:  # a broken CUDA install raises more than ImportError
        return f"unavailable: {type(exc).__name__}: {exc}"[:500]


def cuda_memory() -> dict[str, Any]:
    """Peak CUDA memory of this process (torch's allocator), when it used CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {
        "cuda_device": torch.cuda.get_device_name(0),
        "cuda_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
        "cuda_max_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
    }


def run_ours(spec_json: str) -> dict[str, Any]:
    from agentloop.adapters.training import lora
    from agentloop.adapters.training.spec import TrainSpec

    data = json.loads(spec_json)
    data.pop("bench", None)
    data.pop("hf_base_dir", None)
    spec = TrainSpec.from_json(json.dumps(data))
    losses: list[float] = []
    step_tokens: list[int] = []
    step_times: list[float] = []
    original_step = lora.TrainLoop.step

    def timed_step(loop: Any, batch: Any) -> None:  # measurement only: the trainer's step, unchanged
        tick = time.perf_counter()
        original_step(loop, batch)  # ends with loss.item(), which waits for the GPU
        step_times.append(time.perf_counter() - tick)
        step_tokens.append(batch.tokens)

    lora.TrainLoop.step = timed_step  # type: ignore[method-assign,assignment]
    bnb = _bitsandbytes_status() if spec.device != "cpu" else "not checked (cpu)"
    started = time.perf_counter()
    try:
        result = lora.train_lora(spec, lambda progress: losses.append(float(progress["loss"])))
    finally:
        lora.TrainLoop.step = original_step  # type: ignore[method-assign]
    gguf_adapter = result.gguf_adapter
    return {
        "tokens_per_s": result.tokens_per_s,
        "tokens": result.tokens_seen,
        "steps": result.steps,
        "step_seconds": result.tokens_seen / result.tokens_per_s if result.tokens_per_s else None,
        "losses": losses,
        "process_wall_s": time.perf_counter() - started,
        "includes": "base load, training, saving the PEFT adapter and exporting the GGUF adapter",
        "padding_fraction": result.padding_fraction,
        "device": result.device,
        "qlora": result.qlora,
        "bitsandbytes": bnb,
        "trainer_notes": list(result.notes),
        "step_tokens": step_tokens,
        "step_times_s": step_times,
        "gguf_adapter": str(gguf_adapter) if gguf_adapter else None,
        "gguf_adapter_bytes": gguf_adapter.stat().st_size if gguf_adapter else None,
        "adapter_sha256": result.adapter_sha256,
    }


def run_plain(spec_json: str) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    spec = json.loads(spec_json)
    options = spec.get("bench", {})
    started = time.perf_counter()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    # "cuda" (or "auto" on a CUDA machine): what a user writes for a GPU, bf16 weights and bf16 autocast.
    cuda = spec.get("device", "cpu") != "cpu" and torch.cuda.is_available()
    checkpointing = bool(options.get("gradient_checkpointing", False))
    base = spec["hf_base_dir"]
    tokenizer = AutoTokenizer.from_pretrained(base)
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16 if cuda else torch.float32)
    config = LoraConfig(
        r=spec["lora_r"],
        lora_alpha=spec["lora_alpha"],
        lora_dropout=spec["lora_dropout"],
        target_modules=list(spec["target_modules"]),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    rows = [json.loads(line) for line in Path(spec["train_file"]).read_text().splitlines() if line.strip()]

    def tokenize(row: dict[str, str]) -> dict[str, list[int]]:
        prompt = tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]
        completion = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        ids = (prompt + completion)[: spec["max_seq_len"]]
        labels = ([-100] * len(prompt) + completion)[: spec["max_seq_len"]]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    dataset = [tokenize(row) for row in rows]  # a list is a map-style dataset to the Trainer
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    # Real tokens of each batch in the order the data loader builds them. The loader may build one batch
    # ahead (accelerate looks ahead for the end of the epoch), so only the first max_steps are counted.
    collated: list[int] = []

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = collator(features)
        collated.append(int(batch["attention_mask"].sum()))
        return batch

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.tick = 0.0
            self.seconds = 0.0
            self.times: list[float] = []
            self.losses: list[float] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync()
            self.tick = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync()
            self.times.append(time.perf_counter() - self.tick)
            self.seconds += self.times[-1]

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    timer = StepTimer()
    args = TrainingArguments(
        output_dir=spec["output_dir"],
        per_device_train_batch_size=spec["batch_size"],
        max_steps=spec["max_steps"],
        learning_rate=spec["learning_rate"],
        warmup_steps=int(spec["warmup_ratio"] * spec["max_steps"]),  # as ours derives it
        weight_decay=spec["weight_decay"],
        max_grad_norm=spec["max_grad_norm"],
        lr_scheduler_type="linear",
        seed=spec["seed"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not cuda,
        bf16=cuda,
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[timer])
    train_started = time.perf_counter()
    trainer.train()
    train_wall = time.perf_counter() - train_started
    model.save_pretrained(str(Path(spec["output_dir"]) / "peft"))
    step_tokens = collated[: len(timer.times)]
    tokens = sum(step_tokens)
    return {
        "tokens_per_s": tokens / timer.seconds if timer.seconds else 0.0,
        "tokens": tokens,
        "steps": len(timer.times),
        "step_seconds": timer.seconds,
        "train_wall_s": train_wall,
        "losses": timer.losses,
        "process_wall_s": time.perf_counter() - started,
        "includes": "base load, training, saving the PEFT adapter (no GGUF export)",
        "device": "cuda" if cuda else "cpu",
        "dtype": "bf16 weights, bf16 autocast" if cuda else "float32",
        "gradient_checkpointing": checkpointing,
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "target_tokens": sum(label != -100 for row in dataset for label in row["labels"]),
        "step_tokens": step_tokens,
        "step_times_s": timer.times,
    }


def main(argv: list[str]) -> int:
    arm, spec_path = argv
    runner = {"ours": run_ours, "plain": run_plain}[arm]
    result = runner(Path(spec_path).read_text())
    result["peak_rss_mb"] = peak_rss_mb()
    result.update(cuda_memory())
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

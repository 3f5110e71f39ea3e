"""One arm of the training benchmark, in its own process (so peak RSS is its own):
`python -m bench.train_arm ours|plain SPEC_JSON` prints one line `RESULT {json}`.

- ours: `agentloop.adapters.training.lora.train_lora(spec)`, the trainer the learning loop runs.
- plain: what a user without our trainer writes: transformers `Trainer` + PEFT `get_peft_model` with the same
  LoRA config, the same base weights, data, batch size, steps, learning-rate schedule, seed and threads;
  standard tokenization (prompt with BOS + completion, labels -100 on the prompt) and a padding collator.
Tokens/s in both counts the real (non-padding) tokens of the batches trained on, over the time spent in
optimizer steps (forward, backward, clipping, optimizer), not model loading or data preparation.
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


def run_ours(spec_json: str) -> dict[str, Any]:
    from agentloop.adapters.training.lora import train_lora
    from agentloop.adapters.training.spec import TrainSpec

    spec = TrainSpec.from_json(spec_json)
    losses: list[float] = []
    started = time.perf_counter()
    result = train_lora(spec, lambda progress: losses.append(float(progress["loss"])))
    return {
        "tokens_per_s": result.tokens_per_s,
        "tokens": result.tokens_seen,
        "steps": result.steps,
        "step_seconds": result.tokens_seen / result.tokens_per_s if result.tokens_per_s else None,
        "losses": losses,
        "process_wall_s": time.perf_counter() - started,
        "includes": "base load, training, saving the PEFT adapter and exporting the GGUF adapter",
        "padding_fraction": result.padding_fraction,
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
    started = time.perf_counter()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    base = spec["hf_base_dir"]
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
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
    counted = {"tokens": 0}

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collator(features)
        counted["tokens"] += int(batch["attention_mask"].sum())
        return batch

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.tick = 0.0
            self.seconds = 0.0
            self.losses: list[float] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.tick = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.seconds += time.perf_counter() - self.tick

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
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[timer])
    train_started = time.perf_counter()
    trainer.train()
    train_wall = time.perf_counter() - train_started
    model.save_pretrained(str(Path(spec["output_dir"]) / "peft"))
    return {
        "tokens_per_s": counted["tokens"] / timer.seconds if timer.seconds else 0.0,
        "tokens": counted["tokens"],
        "steps": spec["max_steps"],
        "step_seconds": timer.seconds,
        "train_wall_s": train_wall,
        "losses": timer.losses,
        "process_wall_s": time.perf_counter() - started,
        "includes": "base load, training, saving the PEFT adapter (no GGUF export)",
    }


def main(argv: list[str]) -> int:
    arm, spec_path = argv
    runner = {"ours": run_ours, "plain": run_plain}[arm]
    result = runner(Path(spec_path).read_text())
    result["peak_rss_mb"] = peak_rss_mb()
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Trainer: LoRA fine-tuning of the base model on Transform's tf.data loader.

AdamW with linear warm-up and cosine decay, global-norm clipping, loss on answer tokens only.
Training runs as `validate_every`-step rounds; after each round the validation loss decides the
best weights (kept) and early stopping, and a checkpoint is written atomically to the execution's
work folder, so a killed run resumes from the last round. The saved model has LoRA merged in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from components.base import Component, ExecutionContext
from components.config import param


@dataclass
class TrainerParams:
    """How the model is fine-tuned."""

    steps: int = param(200, "optimizer steps in total")
    batch_size: int = param(16, "examples per step")
    learning_rate: float = param(1e-3, "peak learning rate (after warm-up)")
    warmup_fraction: float = param(0.1, "share of steps with linear warm-up")
    weight_decay: float = param(0.0, "AdamW weight decay on the LoRA weights")
    clip_norm: float = param(1.0, "global gradient-norm clip")
    lora_rank: int = param(16, "LoRA rank")
    lora_alpha: float = param(32.0, "LoRA alpha (scale = alpha / rank)")
    lora_targets: list[str] = param(["query", "key", "value", "attention_output", "feedforward_intermediate_dense",
                                     "feedforward_gate_dense", "feedforward_output_dense"],
                                    "layer names that get LoRA adapters")
    validate_every: int = param(50, "steps between validations and checkpoints")
    early_stopping_patience: int = param(3, "validations without improvement before stopping (0 = never)")
    max_validation_batches: int = param(20, "validation batches per validation")
    jit_compile: bool = param(False, "compile the train step with XLA")
    seed: int = param(0, "seed of shuffling and LoRA initialisation")

    def __post_init__(self):
        for name in ("steps", "batch_size", "lora_rank", "validate_every", "max_validation_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


def build_optimizer(p: TrainerParams):
    import keras

    warmup = int(p.steps * p.warmup_fraction)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else p.learning_rate, decay_steps=max(1, p.steps - warmup),
        warmup_target=p.learning_rate if warmup else None, warmup_steps=warmup, alpha=0.0)
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=p.weight_decay, global_clipnorm=p.clip_norm)


class Trainer(Component):
    name = "trainer"
    version = "1"
    description = "LoRA fine-tuning with warm-up + cosine AdamW, validation, early stopping, checkpoints."
    inputs = {"datasets": "Datasets", "base_model": "BaseModel"}
    outputs = {"model": "Model"}
    Params = TrainerParams

    def execute(self, ctx: ExecutionContext):
        import keras
        import tensorflow as tf

        from components.trainer.callbacks import ProgressBar, RoundEnd
        from components.trainer.checkpoint import load_checkpoint
        from components.transform.tensors import load_dataset
        from models.language_model import enable_lora, load_model, save_model

        p: TrainerParams = ctx.params
        datasets = ctx.input("datasets")
        max_length = json.loads(datasets.path("transform.json").read_text())["max_length"]
        causal_lm, tokenizer, base_config = load_model(ctx.input("base_model").uri)
        keras.utils.set_random_seed(p.seed)
        adapters = enable_lora(causal_lm, p.lora_rank, p.lora_alpha, tuple(p.lora_targets))
        causal_lm.compile(optimizer=build_optimizer(p),
                          # Mean over answer tokens (the weights), not over all padded positions.
                          loss=keras.losses.SparseCategoricalCrossentropy(
                              from_logits=True, reduction="mean_with_sample_weight"),
                          weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="token_accuracy")],
                          jit_compile=p.jit_compile)
        train = load_dataset(datasets.path("train.tfrecord"), p.batch_size, max_length, tokenizer.pad_id,
                             shuffle=True, seed=p.seed, repeat=True)
        validation = load_dataset(datasets.path("validation.tfrecord"), p.batch_size, max_length,
                                  tokenizer.pad_id).take(p.max_validation_batches).cache()
        validation_batches = sum(1 for _ in validation)
        rounds = math.ceil(p.steps / p.validate_every)
        checkpoint = ctx.work_dir / "checkpoint.npz"
        state = {"best_val_loss": float("inf"), "best_round": -1, "history": [], "stale": 0,
                 "best_weights": [np.asarray(v) for v in causal_lm.trainable_variables]}
        first_round = 0
        resumed = load_checkpoint(checkpoint, causal_lm)
        if resumed is not None:
            first_round, state = resumed[0] + 1, resumed[1]
            ctx.log(f"  resuming from the checkpoint after step {first_round * p.validate_every}")
        writer = tf.summary.create_file_writer(str(ctx.tensorboard_dir))
        trainable = sum(int(np.prod(v.shape)) for v in causal_lm.trainable_variables)
        ctx.log(f"  LoRA on {adapters} layers: {trainable:,} trainable parameters; {rounds * p.validate_every} steps")
        callback = RoundEnd(ctx, p, validation, validation_batches, writer, state, checkpoint)
        # Skipping the batches already seen keeps the data order of an uninterrupted run.
        causal_lm.fit(train.skip(first_round * p.validate_every), steps_per_epoch=p.validate_every,
                      epochs=rounds, initial_epoch=first_round, verbose=0, shuffle=False,
                      callbacks=[callback, ProgressBar(rounds * p.validate_every, first_round * p.validate_every)])
        writer.flush()
        for variable, best in zip(causal_lm.trainable_variables, state["best_weights"]):
            variable.assign(best)
        out = ctx.output_dir("model")
        save_model(causal_lm, tokenizer, out, extra={k: v for k, v in base_config.items()
                                                     if k not in ("architecture", "vocabulary_size")})
        (out / "training_history.json").write_text(json.dumps(state["history"], indent=2))
        best = state["history"][state["best_round"]] if state["history"] else {}
        return {"model": {"steps": best.get("step", 0), "best_val_loss": state["best_val_loss"],
                          "val_perplexity": best.get("val_perplexity"), "trainable_parameters": trainable}}

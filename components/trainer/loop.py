"""One training trial: LoRA on the base model, rounds of `validate_every` steps, checkpoints, resume."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from components.base import UsageError
from components.trainer.answer_head import AnswerHeadTrainer
from components.trainer.callbacks import ProgressBar, RoundEnd, TokenCount, best_round_entry
from components.trainer.checkpoint import CheckpointMismatch, load_checkpoint
from models.llm.language_model import enable_lora, load_model
from models.llm.tfrecords import load_dataset
from schemas.artifacts import DatasetsFiles

SAMPLE_PREDICTIONS = 5  # shown in TensorBoard's text tab after each validation


@dataclass
class TrialResult:
    causal_lm: object
    tokenizer: object
    base_config: dict
    history: list
    best: dict


def build_optimizer(p):
    warmup = int(p.total_steps * p.warmup_fraction)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else p.learning_rate, decay_steps=max(1, p.total_steps - warmup),
        warmup_target=p.learning_rate if warmup else None, warmup_steps=warmup, alpha=0.0)
    return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=p.weight_decay, global_clipnorm=p.clip_norm)


def validation_label_eval(causal_lm, tokenizer, datasets_dir: Path, p):
    """A closure scoring label accuracy/macro-F1 on a fixed validation sample, plus a predictions table."""
    from components.common.metrics import overall_metrics, sample_label_rows, score_model
    from models.scoring.constrained import TreeScorer

    datasets = DatasetsFiles(datasets_dir)
    labels = datasets.labels()
    validation = pd.read_parquet(datasets.split_table("validation"))
    per_task = max(1, p.validation_label_examples // max(1, len(labels)))
    rows = sample_label_rows(validation, per_task, p.seed)
    scorer = TreeScorer(causal_lm)  # traced once, reused every round

    def evaluate():
        if rows.empty:
            return {"accuracy": float("nan"), "macro_f1": float("nan")}, "no label tasks"
        predictions = score_model(causal_lm, tokenizer, rows, labels, 8, scorer=scorer)
        predicted = [x.label for x in predictions]
        overall = overall_metrics(rows, predictions)
        metrics = {k: float(overall[k]) for k in ("accuracy", "macro_f1")}
        table = ["| text | gold | predicted |", "|---|---|---|"] + [
            f"| {text[:80].replace('|', '/')} | {gold} | {pred} |"
            for text, gold, pred in zip(rows["model_text"][:SAMPLE_PREDICTIONS], rows["target"], predicted)]
        return metrics, "\n".join(table)

    return evaluate


def build_lora_model(base_model_dir: Path, p):
    """(causal_lm, tokenizer, base config, LoRA adapters, answer-head trainer model) at p's precision and seed.

    Shared by the Keras-fit loop and the distributed loop (which calls it inside its strategy's scope).
    """
    keras.mixed_precision.set_global_policy(p.precision)  # variables stay float32 under mixed_bfloat16
    try:
        causal_lm, tokenizer, base_config = load_model(base_model_dir)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(p.seed)
    adapters = enable_lora(causal_lm, p.lora_rank, p.lora_alpha, tuple(p.lora_targets))
    # Trains the same backbone as causal_lm; the loss is the mean over answer tokens only.
    return causal_lm, tokenizer, base_config, adapters, AnswerHeadTrainer(causal_lm.backbone)


def train_trial(ctx, p, datasets_dir: Path, base_model_dir: Path, tensorboard_dir: Path,
                work_dir: Path) -> TrialResult:
    datasets = DatasetsFiles(datasets_dir)
    transform = datasets.transform()
    causal_lm, tokenizer, base_config, adapters, trainer_model = build_lora_model(base_model_dir, p)
    trainer_model.compile(
        optimizer=build_optimizer(p),
        metrics=[TokenCount(tokenizer.pad_id, False, "tokens"), TokenCount(tokenizer.pad_id, True, "useful_tokens")],
        jit_compile=p.jit_compile)
    train = load_dataset(datasets.tfrecord("train"), p.batch_size, transform["max_length"], tokenizer.pad_id,
                         shuffle=True, seed=p.seed, repeat=True)
    validation = load_dataset(datasets.tfrecord("validation"), p.batch_size, transform["max_length"],
                              tokenizer.pad_id).take(p.max_validation_batches).cache()
    validation_batches = sum(1 for _ in validation)
    rounds = math.ceil(p.steps / p.validate_every)
    checkpoint = work_dir / "checkpoint.npz"
    state = {"best_score": -math.inf, "best_round": -1, "history": [], "stale": 0,
             "best_weights": [np.asarray(v) for v in trainer_model.trainable_variables]}
    first_round = 0
    try:
        resumed = load_checkpoint(checkpoint, trainer_model)
    except CheckpointMismatch as error:
        raise UsageError(str(error)) from None
    if resumed is not None:
        first_round, state = resumed[0] + 1, resumed[1]
        ctx.log(f"  resuming from the checkpoint after step {first_round * p.validate_every}")
    writer = tf.summary.create_file_writer(str(tensorboard_dir))
    with writer.as_default():
        hparams_api.hparams({k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                             for k, v in asdict(p).items()}, trial_id=tensorboard_dir.name)
    trainable = sum(int(np.prod(v.shape)) for v in trainer_model.trainable_variables)
    ctx.log(f"  LoRA r{p.lora_rank} on {adapters} layers: {trainable:,} trainable parameters; "
            f"{p.total_steps} steps of {p.batch_size}, lr {p.learning_rate:g}")
    round_end = RoundEnd(ctx, p, validation, validation_batches,
                         validation_label_eval(causal_lm, tokenizer, datasets_dir, p), writer, state, checkpoint)
    if first_round < rounds and not (p.early_stopping_patience and state["stale"] >= p.early_stopping_patience):
        # Skipping the batches already seen keeps the data order of an uninterrupted run.
        trainer_model.fit(train.skip(first_round * p.validate_every), steps_per_epoch=p.validate_every, epochs=rounds,
                      initial_epoch=first_round, verbose=0, shuffle=False,
                      callbacks=[round_end, ProgressBar(p.total_steps, first_round * p.validate_every)])
    writer.flush()
    for variable, best in zip(trainer_model.trainable_variables, state["best_weights"]):
        variable.assign(best)
    best = best_round_entry(state)
    return TrialResult(causal_lm, tokenizer, base_config, state["history"], {**best, "trainable_parameters": trainable})

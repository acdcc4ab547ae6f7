"""Keras pieces of the Trainer: token counting, round-end validation/checkpointing, a progress bar."""

from __future__ import annotations

import math
import time

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from components.base import PipelineError
from components.trainer.checkpoint import save_checkpoint


class TokenCount(keras.metrics.Metric):
    """Tokens seen since the last reset: all positions, or only real (non-padding) ones."""

    def __init__(self, pad_id: int, useful_only: bool, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.pad_id, self.useful_only = pad_id, useful_only
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        # Targets equal <|endoftext|> exactly at padded positions: real sequences never contain it.
        tokens = tf.cast(tf.not_equal(y_true, self.pad_id), "float32") if self.useful_only \
            else tf.ones_like(y_true, dtype="float32")
        self.count.assign_add(tf.reduce_sum(tokens))

    def result(self):
        return self.count

    def get_config(self):
        return {**super().get_config(), "pad_id": self.pad_id, "useful_only": self.useful_only}


class RoundEnd(keras.callbacks.Callback):
    """After every `validate_every` steps: validate, log, keep the best weights, checkpoint, stop early.

    `label_eval()` returns label accuracy/macro-F1 on a validation sample plus a few predictions.
    """

    def __init__(self, ctx, p, validation, validation_batches, label_eval, writer, state, checkpoint):
        super().__init__()
        self.ctx, self.p, self.validation, self.writer = ctx, p, validation, writer
        self.validation_batches, self.label_eval = validation_batches, label_eval
        self.state, self.checkpoint = state, checkpoint

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.monotonic() - self.started
        val = self.model.evaluate(self.validation, steps=self.validation_batches, verbose=0, return_dict=True)
        labels, samples = self.label_eval()
        step = (epoch + 1) * self.p.validate_every
        entry = {"step": step, "train_loss": float(logs["loss"]), "val_loss": float(val["loss"]),
                 "val_perplexity": float(np.exp(val["loss"])),
                 "val_accuracy": labels["accuracy"], "val_macro_f1": labels["macro_f1"],
                 "tokens_per_s": float(logs["tokens"]) / seconds,
                 "useful_tokens_per_s": float(logs["useful_tokens"]) / seconds,
                 "steps_per_s": self.p.validate_every / seconds,
                 "learning_rate": float(self.model.optimizer.learning_rate)}
        if record_round(self.ctx.log, self.p, self.writer, self.state, self.checkpoint, self.model, epoch, entry,
                        samples):
            self.model.stop_training = True


def round_score(entry: dict, metric: str) -> float:
    """The early-stopping score of a round: macro-F1 (or -val_loss); never NaN.

    With no label rows in validation macro-F1 is NaN, and `NaN > best` is never true: the run
    would have restored its initial weights while reporting the last round as best. Such a round
    is scored by -val_loss instead; a round whose loss is not finite either scores -inf.
    """
    for value in ((entry["val_macro_f1"],) if metric == "val_macro_f1" else ()) + (-entry["val_loss"],):
        if math.isfinite(value):
            return float(value)
    return -math.inf


def best_round_entry(state: dict) -> dict:
    """The best round's history entry; PipelineError when no round had a finite score (training diverged)."""
    if not state["history"]:
        return {}
    if state["best_round"] < 0:
        raise PipelineError(f"no validation round of {len(state['history'])} had a finite loss: training diverged "
                            "(try a lower trainer.learning_rate)")
    return state["history"][state["best_round"]]


def record_round(log, p, writer, state, checkpoint, model, round_index: int, entry: dict, samples: str) -> bool:
    """Log a finished round, keep the best weights, write the checkpoint; True when training should stop early.

    `model` has `trainable_variables` and `optimizer` (a Keras model, or the distributed loop's stand-in).
    """
    step = entry["step"]
    state["history"].append(entry)
    with writer.as_default(step=step):
        for key, value in entry.items():
            if key != "step":
                tf.summary.scalar(key, value)
        tf.summary.text("validation_predictions", samples)
    writer.flush()
    log(f"  step {step}: train loss {entry['train_loss']:.3f}, val loss {entry['val_loss']:.3f}, "
        f"val accuracy {entry['val_accuracy']:.3f}, macro-F1 {entry['val_macro_f1']:.3f}, "
        f"{entry['useful_tokens_per_s']:.0f} useful tok/s")
    score = round_score(entry, p.early_stopping_metric)
    if score > state["best_score"]:
        state.update(best_score=score, best_round=len(state["history"]) - 1, stale=0,
                     best_weights=[np.asarray(v) for v in model.trainable_variables])
    else:
        state["stale"] += 1
    save_checkpoint(checkpoint, model, round_index, state)
    if p.early_stopping_patience and state["stale"] >= p.early_stopping_patience:
        log(f"  early stop: no {p.early_stopping_metric} improvement in {state['stale']} validations")
        return True
    return False


class ProgressBar(keras.callbacks.Callback):
    """A tqdm bar over training steps, with ETA."""

    def __init__(self, total: int, initial: int):
        super().__init__()
        self.total, self.initial = total, initial

    def on_train_begin(self, logs=None):
        self.bar = tqdm(total=self.total, initial=self.initial, desc="  training", unit="step",
                        leave=False, mininterval=1.0)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}")

    def on_train_end(self, logs=None):
        self.bar.close()

"""Keras callbacks of the Trainer: round-end validation/checkpointing and a progress bar."""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from components.trainer.checkpoint import save_checkpoint


class RoundEnd(keras.callbacks.Callback):
    """After every `validate_every` steps: validate, log, keep the best weights, checkpoint, stop early."""

    def __init__(self, ctx, p, validation, validation_batches, writer, state, checkpoint):
        super().__init__()
        self.ctx, self.p, self.validation, self.writer = ctx, p, validation, writer
        self.validation_batches = validation_batches
        self.state, self.checkpoint = state, checkpoint

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):

        seconds = time.monotonic() - self.started
        val = self.model.evaluate(self.validation, steps=self.validation_batches, verbose=0, return_dict=True)
        step = (epoch + 1) * self.p.validate_every
        entry = {"step": step, "train_loss": float(logs["loss"]), "val_loss": float(val["loss"]),
                 "val_perplexity": float(np.exp(val["loss"])),
                 "val_token_accuracy": float(val["token_accuracy"]),
                 "steps_per_s": self.p.validate_every / seconds,
                 "learning_rate": float(self.model.optimizer.learning_rate)}
        state = self.state
        state["history"].append(entry)
        with self.writer.as_default(step=step):
            for key, value in entry.items():
                if key != "step":
                    tf.summary.scalar(key, value)
        self.writer.flush()
        self.ctx.log(f"  step {step}: train loss {entry['train_loss']:.3f}, val loss {entry['val_loss']:.3f} "
                     f"(ppl {entry['val_perplexity']:.2f}), {entry['steps_per_s']:.2f} steps/s")
        if entry["val_loss"] < state["best_val_loss"]:
            state.update(best_val_loss=entry["val_loss"], best_round=len(state["history"]) - 1, stale=0,
                         best_weights=[np.asarray(v) for v in self.model.trainable_variables])
        else:
            state["stale"] += 1
        save_checkpoint(self.checkpoint, self.model, epoch, state)
        if self.p.early_stopping_patience and state["stale"] >= self.p.early_stopping_patience:
            self.ctx.log(f"  early stop: no validation improvement in {state['stale']} validations")
            self.model.stop_training = True


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

"""Knowledge distillation of the teacher into the tf-keras student, on answer tokens only.

Loss per answer token: `alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(label)`, where
`_T` is a softmax at temperature T (Hinton et al.: the T^2 keeps the soft-target gradients on the
scale of the hard-label ones as T changes). Prompt and padding positions carry no loss, as in the
Trainer.

Teacher soft targets are kept as the top-k logits (values and token ids) per answer position.
Why: a full SmolLM2 distribution is 49,152 floats (192 KB) per position, top-64 is 512 bytes
(~380x less), so a whole training split's targets fit in memory and are computed once, not once
per epoch (a 135M teacher forward pass on 2 cores costs more than a student training step).
`top_k_mass` records how much of the teacher's probability the k tokens hold, so k can be checked.
The teacher part of the KL is renormalised over its k tokens; the student's log-probabilities are
over its full vocabulary, so mass it puts outside the teacher's top k is penalised.
Logits (not probabilities) are stored so the temperature can still be chosen on validation.

A "soft batch" is a dict of numpy arrays: token_ids, targets, weights (batch, seq) from the
Transform loader, and teacher_logits, teacher_indices (answer positions, k) in row-major order of
the positions where weights > 0 (`top_k_mass` (answer positions,) is informational).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf
import tf_keras

DEFAULT_TOP_K = 64


def top_k_soft_targets(logits_fn: Callable, dataset: Iterable, k: int = DEFAULT_TOP_K) -> Iterator[dict]:
    """Soft batches from Transform-loader batches `(x={"token_ids", "padding_mask"}, y, weights)`.

    `logits_fn(x) -> (batch, seq, vocab)` logits is any teacher (keras-hub model, exported model,
    a test function). A generator: `list(...)` it to precompute, or hand it to `distill` to stream.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for x, y, weights in dataset:
        answer = np.asarray(weights) > 0  # (batch, seq)
        logits = tf.boolean_mask(tf.cast(logits_fn(x), tf.float32), answer)  # (answer positions, vocab)
        top = tf.math.top_k(logits, k=min(k, int(logits.shape[-1])))
        mass = tf.reduce_sum(tf.exp(top.values - tf.reduce_logsumexp(logits, axis=-1, keepdims=True)), axis=-1)
        yield {"token_ids": np.asarray(x["token_ids"], np.int32), "targets": np.asarray(y, np.int32),
               "weights": np.asarray(weights, np.float32), "teacher_logits": top.values.numpy(),
               "teacher_indices": top.indices.numpy().astype(np.int32), "top_k_mass": mass.numpy()}


def distillation_loss(student_logits, targets, weights, teacher_logits, teacher_indices, alpha: float,
                      temperature: float):
    """(total, kd, ce) scalars, each a mean over answer tokens; student_logits (batch, seq, vocab)."""
    answer = weights > 0
    student = tf.boolean_mask(tf.cast(student_logits, tf.float32), answer)  # (answer positions, vocab)
    ce = tf.reduce_mean(tf_keras.losses.sparse_categorical_crossentropy(
        tf.boolean_mask(targets, answer), student, from_logits=True))
    teacher_log_p = tf.nn.log_softmax(teacher_logits / temperature, axis=-1)  # (answer positions, k)
    student_log_p = tf.gather(tf.nn.log_softmax(student / temperature, axis=-1), teacher_indices, batch_dims=1)
    kd = tf.reduce_mean(tf.reduce_sum(tf.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1))
    kd = kd * temperature ** 2
    return alpha * kd + (1.0 - alpha) * ce, kd, ce


def student_limits(student) -> tuple[int, int | None]:
    """(vocabulary size, longest input) of a student, also through pruning/QAT wrappers."""
    lengths = [getattr(getattr(layer, "layer", layer), "max_length", None) for layer in student.layers]
    return int(student.output_shape[-1]), next((n for n in lengths if n), None)


def check_soft_batch(student, batch: dict) -> None:
    """Raise ValueError when a soft batch cannot train this student (before any step runs)."""
    missing = {"token_ids", "targets", "weights", "teacher_logits", "teacher_indices"} - set(batch)
    if missing:
        raise ValueError(f"soft batches need {sorted(missing)}; build them with top_k_soft_targets")
    vocabulary, max_length = student_limits(student)
    length = np.shape(batch["token_ids"])[1]
    if max_length is not None and length > max_length:
        raise ValueError(f"a batch of {length}-token sequences does not fit the student's max_length {max_length}")
    top = max(int(np.max(batch["token_ids"])), int(np.max(batch["teacher_indices"], initial=0)))
    if top >= vocabulary:
        raise ValueError(f"token id {top} is outside the student's vocabulary of {vocabulary}; "
                         "the student must share the teacher's tokenizer")
    if len(batch["teacher_logits"]) != int(np.sum(np.asarray(batch["weights"]) > 0)):
        raise ValueError("teacher_logits must hold one row per answer position (weights > 0)")


def _batches(batches: Iterable[dict], steps: int) -> Iterator[dict]:
    """A list is cycled (precomputed targets, several epochs); an iterator is streamed once (training
    stops early if it ends first: the returned history is then shorter than `steps`)."""
    return itertools.islice(itertools.cycle(batches) if isinstance(batches, (list, tuple)) else iter(batches), steps)


def distill(student, batches: Iterable[dict], alpha: float = 0.5, temperature: float = 2.0, steps: int = 100,
            learning_rate: float = 1e-3, callbacks: list | None = None, log: Callable[[str], None] | None = None,
            log_every: int = 50) -> list[dict]:
    """Train `student` on soft batches for `steps` steps; the loss history, one dict per step.

    `callbacks` are tf-keras callbacks driven as in a one-epoch `fit` (TF-MOT's UpdatePruningStep
    needs on_train_begin / on_train_batch_begin / on_epoch_end). Inputs are checked on the first
    batch before any training. `log` (e.g. ctx.log) gets the losses every `log_every` steps.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the soft-target share) must be in [0, 1], got {alpha}")
    if temperature <= 0 or steps < 1:
        raise ValueError(f"temperature must be > 0 and steps >= 1, got {temperature} and {steps}")
    stream = _batches(batches, steps)
    first = next(stream, None)
    if first is None:
        raise ValueError("no soft batches to train on")
    check_soft_batch(student, first)
    optimizer = tf_keras.optimizers.Adam(learning_rate, global_clipnorm=1.0)
    matrix, vector = tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.float32)

    # One trace for every bucket length: the shapes are left open.
    @tf.function(input_signature=[matrix, matrix, vector, vector, matrix])
    def train_step(token_ids, targets, weights, teacher_logits, teacher_indices):
        with tf.GradientTape() as tape:
            logits = student(token_ids, training=True)  # (batch, seq, vocab)
            loss, kd, ce = distillation_loss(logits, targets, weights, teacher_logits, teacher_indices,
                                             alpha, temperature)
        gradients = tape.gradient(loss, student.trainable_variables)
        optimizer.apply_gradients(zip(gradients, student.trainable_variables))
        return loss, kd, ce

    hooks = tf_keras.callbacks.CallbackList(callbacks or [], model=student)
    hooks.on_train_begin()
    hooks.on_epoch_begin(0)
    history = []
    for step, batch in enumerate(itertools.chain([first], stream)):
        hooks.on_train_batch_begin(step)
        loss, kd, ce = train_step(*(np.asarray(batch[key], dtype) for key, dtype in (
            ("token_ids", np.int32), ("targets", np.int32), ("weights", np.float32),
            ("teacher_logits", np.float32), ("teacher_indices", np.int32))))
        logs = {"loss": float(loss), "kd": float(kd), "ce": float(ce)}
        history.append(logs)
        hooks.on_train_batch_end(step, logs)
        if log and (step + 1) % log_every == 0:
            log(f"  distill step {step + 1}/{steps}: loss {logs['loss']:.4f} (kd {logs['kd']:.4f}, "
                  f"ce {logs['ce']:.4f})")
    hooks.on_epoch_end(0, history[-1])  # UpdatePruningStep re-applies the masks after the last update
    hooks.on_train_end(history[-1])
    return history


def answer_loss(student, batches: Iterable[dict], alpha: float = 0.0, temperature: float = 1.0) -> float:
    """Mean loss over soft batches without training; alpha=0 gives the hard-label answer CE, the
    number to compare students trained with different mixes and temperatures on validation."""
    total, tokens = 0.0, 0
    for batch in batches:
        logits = student(np.asarray(batch["token_ids"], np.int32), training=False)
        loss, _, _ = distillation_loss(logits, batch["targets"], np.asarray(batch["weights"], np.float32),
                                       batch["teacher_logits"], batch["teacher_indices"], alpha, temperature)
        count = int(np.sum(np.asarray(batch["weights"]) > 0))
        total, tokens = total + float(loss) * count, tokens + count
    if tokens == 0:
        raise ValueError("no answer tokens to score")
    return total / tokens

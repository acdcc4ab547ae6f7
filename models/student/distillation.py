"""Knowledge distillation of the teacher into the tf-keras student, on answer tokens only.

Loss per answer token: `alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(label)`, where
`_T` is a softmax at temperature T (Hinton et al.: the T^2 keeps the soft-target gradients on the
scale of the hard-label ones as T changes). Prompt and padding positions carry no loss, as in the
Trainer.

Both distributions are over the student's **answer vocabulary** (`models.student.model`): the teacher's
logits at the answer positions are gathered at those token ids, i.e. the teacher's distribution
conditioned on "the next token is an answer token". `answer_mass` records how much of the
teacher's probability that set holds (near 1 for a fine-tuned teacher on label answers). The
targets are small ((answer positions, answer vocabulary) floats), so a whole training split's are
computed once, not once per epoch (a 135M teacher forward pass on 2 cores costs more than a
student step). Logits, not probabilities, are stored so the temperature can still be chosen.

A "soft batch" is a dict of numpy arrays: token_ids, padding_mask, targets (answer-vocabulary
columns, -1 outside answers), weights (batch, seq) from the Transform loader, and teacher_logits
(answer positions, answer vocabulary) in row-major order of the positions where weights > 0.
Rows whose answer has a token outside the answer vocabulary (free-text replies) are not the
student's task: they are left out and counted in `skipped_rows`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf
import tf_keras


def answer_soft_targets(answer_logits_fn: Callable, dataset: Iterable, output_tokens) -> Iterator[dict]:
    """Soft batches from Transform-loader batches `(x={"token_ids", "padding_mask"}, y, weights)`.

    `answer_logits_fn(x, answer) -> (answer positions, vocab)` is any teacher's logits at the
    positions where the bool mask `answer` (batch, seq) is set, in row-major order (`keras_answer_logits`,
    or a test function). A generator: `list(...)` it to precompute, or hand it to `distill` to stream.
    Batches left with no label row are skipped: their count goes into the next batch's `skipped_rows`, or the
    last one's (each batch is held until the next is known), so the counts add up to every row left out.
    """
    output_tokens = np.asarray(output_tokens, np.int32)
    column = np.full(max(int(output_tokens.max()) + 1, 1), -1, np.int32)
    column[output_tokens] = np.arange(len(output_tokens))
    skipped, pending = 0, None
    for x, y, weights in dataset:
        y, weights = np.asarray(y), np.asarray(weights)
        answer = weights > 0
        known = answer & (y >= 0) & (y < len(column))
        columns = np.where(known, column[np.clip(y, 0, len(column) - 1)], -1)  # -1: not an answer-vocabulary token
        keep = ~np.any(answer & (columns < 0), axis=1) & answer.any(axis=1)  # label rows only
        skipped += int(np.sum(~keep))
        if not keep.any():
            continue
        token_ids, padding_mask = np.asarray(x["token_ids"])[keep], np.asarray(x["padding_mask"])[keep]
        logits = tf.cast(answer_logits_fn({"token_ids": token_ids, "padding_mask": padding_mask}, answer[keep]),
                         tf.float32)  # (answer positions, vocab)
        restricted = tf.gather(logits, output_tokens, axis=-1)  # (answer positions, answer vocabulary)
        mass = tf.exp(tf.reduce_logsumexp(restricted, axis=-1) - tf.reduce_logsumexp(logits, axis=-1))
        if pending is not None:
            yield pending
        pending = {"token_ids": token_ids.astype(np.int32), "padding_mask": padding_mask.astype(np.int32),
                   "targets": columns[keep].astype(np.int32), "weights": weights[keep].astype(np.float32),
                   "teacher_logits": restricted.numpy(), "answer_mass": mass.numpy(), "skipped_rows": skipped}
        skipped = 0
    if pending is not None:
        pending["skipped_rows"] += skipped  # free-text rows after the last label batch
        yield pending


def keras_answer_logits(causal_lm, precision: str = "mixed_bfloat16") -> Callable:
    """A keras-hub causal LM as `answer_soft_targets`' teacher: the vocabulary head runs at the answer
    positions only (a fifth of the model's compute at every position otherwise).

    `precision` "mixed_bfloat16" runs a bfloat16 copy of the model (float32 weights kept): measured
    1.6x faster on this machine's CPU for a [16, 160] batch; its argmax agreed with float32 on 95%
    of all positions (answer positions of a fine-tuned model are far more confident).
    """
    import keras

    if precision not in ("float32", "mixed_bfloat16"):
        raise ValueError(f"precision must be float32 or mixed_bfloat16, got {precision!r}")
    backbone = causal_lm.backbone
    if precision != backbone.dtype_policy.name:
        config = {**backbone.get_config(), "dtype": keras.DTypePolicy(precision),
                  "tie_word_embeddings": backbone.token_embedding.tie_weights}  # not in get_config()
        backbone, source = backbone.__class__.from_config(config), backbone
        backbone.set_weights(source.get_weights())

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2 + [tf.TensorSpec([None, None], tf.bool)])
    def forward(token_ids, padding_mask, answer):
        hidden = backbone({"token_ids": token_ids, "padding_mask": padding_mask}, training=False)
        hidden = tf.boolean_mask(hidden, answer)[None, :, :]  # (1, answer positions, hidden), norm applied
        return tf.cast(backbone.token_embedding(hidden, reverse=True)[0], tf.float32)

    return lambda x, answer: forward(x["token_ids"], x["padding_mask"], answer)


def distillation_loss(student_logits, targets, weights, teacher_logits, alpha: float, temperature: float):
    """(total, kd, ce) scalars, each a mean over answer tokens; student_logits (batch, seq, answer vocabulary)."""
    answer = weights > 0
    student = tf.boolean_mask(tf.cast(student_logits, tf.float32), answer)  # (answer positions, answer vocabulary)
    ce = tf.reduce_mean(tf_keras.losses.sparse_categorical_crossentropy(
        tf.boolean_mask(targets, answer), student, from_logits=True))
    teacher_log_p = tf.nn.log_softmax(teacher_logits / temperature, axis=-1)
    student_log_p = tf.nn.log_softmax(student / temperature, axis=-1)
    kd = tf.reduce_mean(tf.reduce_sum(tf.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1))
    kd = kd * temperature ** 2
    return alpha * kd + (1.0 - alpha) * ce, kd, ce


def student_limits(student) -> tuple[int, int, int | None]:
    """(input vocabulary, answer vocabulary, longest input) of a student, also through pruning/QAT wrappers."""
    from models.student.model import student_max_length

    inner = [getattr(layer, "layer", layer) for layer in student.layers]
    vocabulary = next(int(layer.input_dim) for layer in inner if isinstance(layer, tf_keras.layers.Embedding))
    return vocabulary, int(student.output_shape[-1]), student_max_length(student)


def check_soft_batch(student, batch: dict) -> None:
    """Raise ValueError when a soft batch cannot train this student (before any step runs)."""
    missing = {"token_ids", "padding_mask", "targets", "weights", "teacher_logits"} - set(batch)
    if missing:
        raise ValueError(f"soft batches need {sorted(missing)}; build them with answer_soft_targets")
    vocabulary, answers, max_length = student_limits(student)
    length = np.shape(batch["token_ids"])[1]
    if max_length is not None and length > max_length:
        raise ValueError(f"a batch of {length}-token sequences does not fit the student's max_length {max_length}")
    if int(np.max(batch["token_ids"])) >= vocabulary:
        raise ValueError(f"token id {int(np.max(batch['token_ids']))} is outside the student's vocabulary of "
                         f"{vocabulary}; the student must share the teacher's tokenizer")
    if np.shape(batch["teacher_logits"])[-1] != answers or int(np.max(batch["targets"])) >= answers:
        raise ValueError(f"the soft targets cover {np.shape(batch['teacher_logits'])[-1]} answer tokens but the "
                         f"student's head has {answers}: build them with the student's output_tokens")
    if len(batch["teacher_logits"]) != int(np.sum(np.asarray(batch["weights"]) > 0)):
        raise ValueError("teacher_logits must hold one row per answer position (weights > 0)")


# The arrays of a soft batch a training or scoring step reads, in its argument order.
SOFT_BATCH_ARRAYS = (("token_ids", np.int32), ("padding_mask", np.int32), ("targets", np.int32),
                     ("weights", np.float32), ("teacher_logits", np.float32))


def _batches(batches: Iterable[dict], steps: int) -> Iterator[dict]:
    """A list is cycled (precomputed targets, several epochs); an iterator is streamed once (training
    stops early if it ends first: the returned history is then shorter than `steps`)."""
    return itertools.islice(itertools.cycle(batches) if isinstance(batches, (list, tuple)) else iter(batches), steps)


def _student_call(student, token_ids, padding_mask, training: bool):
    from models.student.model import INPUT_NAMES, causal_inputs

    inputs = causal_inputs(token_ids, padding_mask)
    return student([inputs[name] for name in INPUT_NAMES], training=training)


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
    @tf.function(input_signature=[matrix, matrix, matrix, vector, vector])
    def train_step(token_ids, padding_mask, targets, weights, teacher_logits):
        with tf.GradientTape() as tape:
            logits = _student_call(student, token_ids, padding_mask, training=True)
            loss, kd, ce = distillation_loss(logits, targets, weights, teacher_logits, alpha, temperature)
        gradients = tape.gradient(loss, student.trainable_variables)
        optimizer.apply_gradients(zip(gradients, student.trainable_variables))
        return loss, kd, ce

    hooks = tf_keras.callbacks.CallbackList(callbacks or [], model=student)
    hooks.on_train_begin()
    hooks.on_epoch_begin(0)
    history = []
    for step, batch in enumerate(itertools.chain([first], stream)):
        hooks.on_train_batch_begin(step)
        loss, kd, ce = train_step(*(np.asarray(batch[key], dtype) for key, dtype in SOFT_BATCH_ARRAYS))
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
        token_ids, padding_mask, targets, weights, teacher = (np.asarray(batch[k], t) for k, t in SOFT_BATCH_ARRAYS)
        logits = _student_call(student, token_ids, padding_mask, training=False)
        loss, _, _ = distillation_loss(logits, targets, weights, teacher, alpha, temperature)
        count = int(np.sum(weights > 0))
        total, tokens = total + float(loss) * count, tokens + count
    if tokens == 0:
        raise ValueError("no answer tokens to score")
    return total / tokens

"""Tokenised examples as TFRecord files, and the one tf.data loader Trainer and Evaluator share.

Each record holds `token_ids` (prompt + answer) and `answer_start` (index of the first answer
token). The loader turns them into causal-LM batches: inputs are ids[:-1], targets ids[1:], and
the sample weight is 1 on answer positions only, so the loss is on answer tokens only.

Batches are bucketed by length and padded to their bucket's edge: padding stays small (Transform
reports the fraction) and there are only a handful of distinct batch shapes, so the compiled
train step is traced once per bucket instead of once per batch length (measured on SmolLM2:
per-length shapes retraced the 30-layer graph for most batches and grew the process to >10 GB).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

FEATURES = {
    "token_ids": tf.io.VarLenFeature(tf.int64),
    "answer_start": tf.io.FixedLenFeature([], tf.int64),
}


def write_tfrecord(path: Path, sequences: list[list[int]], answer_starts: list[int]) -> None:
    tmp = Path(str(path) + ".tmp")
    with tf.io.TFRecordWriter(str(tmp)) as writer:
        for ids, start in zip(sequences, answer_starts):
            example = tf.train.Example(features=tf.train.Features(feature={
                "token_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=ids)),
                "answer_start": tf.train.Feature(int64_list=tf.train.Int64List(value=[start])),
            }))
            writer.write(example.SerializeToString(deterministic=True))  # map order fixed: same bytes every run
    tmp.replace(path)


def bucket_boundaries(max_length: int, smallest: int = 48) -> list[int]:
    """Bucket edges growing by ~1.3x, multiples of 16, ending above max_length (batches pad to their edge)."""
    edges, edge = [], smallest
    while edge <= max_length:
        edges.append(edge)
        edge = -(-int(edge * 1.3) // 16) * 16
    return edges + [max_length + 1]


def padding_fraction(lengths: list[int], batch_size: int, max_length: int) -> float:
    """Share of padded positions if examples are batched within the loader's length buckets."""
    edges = bucket_boundaries(max_length)
    buckets: dict[int, list[int]] = {}
    for length in lengths:
        edge = next(e for e in edges if length - 1 < e)  # the loader batches length-1 inputs
        buckets.setdefault(edge, []).append(length - 1)
    padded = real = 0
    for edge, items in buckets.items():
        padded += (edge - 1) * len(items)
        real += sum(items)
    return 0.0 if padded == 0 else 1.0 - real / padded


def _to_causal_lm(record, pad_id: int):
    ids = tf.cast(tf.sparse.to_dense(record["token_ids"]), tf.int32)  # (seq,)
    positions = tf.range(tf.shape(ids)[0] - 1)
    # Target position i predicts ids[i + 1]; weight it when ids[i + 1] is an answer token.
    weight = tf.cast(positions + 1 >= tf.cast(record["answer_start"], tf.int32), tf.float32)
    x = {"token_ids": ids[:-1], "padding_mask": tf.ones_like(ids[:-1])}
    return x, ids[1:], weight


def load_dataset(path: Path, batch_size: int, max_length: int, pad_id: int, shuffle: bool = False,
                 seed: int = 0, repeat: bool = False) -> tf.data.Dataset:
    """Batches of (x={"token_ids", "padding_mask"}, y, sample_weight), bucketed by length."""
    dataset = tf.data.TFRecordDataset(str(path)).map(
        lambda raw: tf.io.parse_single_example(raw, FEATURES), num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.cache()
    if shuffle:
        dataset = dataset.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map(lambda r: _to_causal_lm(r, pad_id), num_parallel_calls=tf.data.AUTOTUNE)
    edges = bucket_boundaries(max_length)
    dataset = dataset.bucket_by_sequence_length(
        element_length_func=lambda x, y, w: tf.shape(y)[0],
        bucket_boundaries=edges,
        bucket_batch_sizes=[batch_size] * (len(edges) + 1),
        padding_values=({"token_ids": pad_id, "padding_mask": 0}, pad_id, 0.0),
        pad_to_bucket_boundary=True,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def count_records(path: Path) -> int:
    return int(sum(1 for _ in tf.data.TFRecordDataset(str(path))))


def answer_token_perplexity(causal_lm, dataset: tf.data.Dataset) -> tuple[float, int]:
    """exp(mean negative log-likelihood) over answer tokens, and how many tokens were scored.

    The vocabulary head runs on answer positions only (`answer_nll`): the prompt positions' logits,
    (batch, seq, 49,152) floats a batch, would be computed and thrown away."""
    backbone = causal_lm.backbone
    total_nll, total_tokens = 0.0, 0
    for x, y, weight in dataset:
        total_nll += float(tf.reduce_sum(answer_nll(backbone, backbone(x, training=False), y, weight)))
        total_tokens += int(tf.reduce_sum(weight))
    if total_tokens == 0:
        raise ValueError("no answer tokens to score")
    return float(np.exp(total_nll / total_tokens)), total_tokens


def answer_nll(backbone, hidden_states, targets, weight):
    """Negative log-likelihood of every answer token, (answers,) float32: the (tied) head on answer positions only."""
    answer = weight > 0  # (batch, seq)
    hidden = tf.boolean_mask(hidden_states, answer)  # (answers, hidden)
    answer_targets = tf.boolean_mask(targets, answer)  # (answers,)
    logits = backbone.token_embedding(hidden, reverse=True)  # (answers, vocab)
    return keras.losses.sparse_categorical_crossentropy(answer_targets, tf.cast(logits, "float32"), from_logits=True)


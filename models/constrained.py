"""Label-constrained decoding: a prediction is always a valid label, and carries a probability.

The label set is tokenised (each label followed by <|im_end|>, so no label is a prefix of another)
into a prefix tree. Decoding is greedy over the tree: at each step the logits are masked to the
children of the current node, renormalised, and the best child taken. The label probability is the
product of those renormalised step probabilities. Cost: one prompt pass plus one cached step per
token of the longest label, for any number of labels, instead of one forward pass per label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.prompts import format_answer
from models.tokenizer import ChatTokenizer


@dataclass
class Prediction:
    label: str
    probability: float


class LabelTrie:
    """Prefix tree over the token sequences of a label set."""

    def __init__(self, labels: list[str], tokenizer: ChatTokenizer):
        if not labels:
            raise ValueError("the label set is empty")
        self.labels = list(labels)
        self.sequences = [tuple(tokenizer.encode(format_answer(label))) for label in self.labels]
        if len(set(self.sequences)) != len(self.sequences):
            raise ValueError("two labels tokenise to the same sequence")
        self.max_depth = max(len(s) for s in self.sequences)
        self._children: dict[tuple[int, ...], list[int]] = {}
        self._leaf: dict[tuple[int, ...], int] = {}
        for index, sequence in enumerate(self.sequences):
            for depth in range(len(sequence)):
                children = self._children.setdefault(sequence[:depth], [])
                if sequence[depth] not in children:
                    children.append(sequence[depth])
            self._leaf[sequence] = index

    def allowed(self, prefix: tuple[int, ...]) -> list[int]:
        return self._children.get(prefix, [])

    def label_of(self, prefix: tuple[int, ...]) -> str | None:
        index = self._leaf.get(prefix)
        return None if index is None else self.labels[index]


def _log_softmax_over(logits: np.ndarray, allowed: list[int]) -> np.ndarray:
    chosen = logits[allowed].astype(np.float64)
    chosen -= chosen.max()
    return chosen - np.log(np.exp(chosen).sum())


def step_rows(trie: LabelTrie, prefixes: list[tuple[int, ...]], logprobs: list[float],
              next_logits: np.ndarray) -> list[int]:
    """Advance every unfinished row by its best allowed token; returns the tokens to feed next."""
    feed = []
    for row, prefix in enumerate(prefixes):
        allowed = trie.allowed(prefix)
        if not allowed:  # finished: feed anything, its output is ignored
            feed.append(prefix[-1] if prefix else 0)
            continue
        scores = _log_softmax_over(next_logits[row], allowed)
        best = int(np.argmax(scores))
        prefixes[row] = prefix + (allowed[best],)
        logprobs[row] += float(scores[best])
        feed.append(allowed[best])
    return feed


def _finish(trie: LabelTrie, prefixes, logprobs) -> list[Prediction]:
    return [Prediction(trie.label_of(p), float(np.exp(lp))) for p, lp in zip(prefixes, logprobs)]


class CachedScorer:
    """Batched forward passes with keras-hub's KV cache and a key mask, for left-padded prompts.

    Prompts in a batch are left-padded to a common length and the padded keys are masked out.
    Rotary embeddings make attention depend only on position *differences*, so shifting a prompt
    right by its padding changes nothing: results equal unpadded, one-at-a-time decoding.
    """

    def __init__(self, causal_lm):
        import tensorflow as tf

        self.causal_lm = causal_lm
        self.backbone = causal_lm.backbone
        b = self.backbone
        cache_shape = [None, b.num_layers, 2, None, b.num_key_value_heads, b.hidden_dim // b.num_query_heads]
        # One trace for every batch size, prompt length and step: shapes are left open.
        self._forward = tf.function(self._forward_eager, input_signature=[
            tf.TensorSpec([None, None], tf.int32), tf.TensorSpec(cache_shape, causal_lm.compute_dtype),
            tf.TensorSpec([], tf.int32), tf.TensorSpec([None, None], tf.int32)])

    def _forward_eager(self, token_ids, cache, index, key_mask):
        from keras import ops

        backbone = self.backbone
        query_length = ops.shape(token_ids)[1]
        # (batch, query, cache_length): each query may see every unmasked key; the layer adds causality.
        attention_mask = ops.repeat(key_mask[:, None, :], query_length, axis=1)
        x = backbone.token_embedding(token_ids)  # (batch, query, hidden)
        caches = []
        for i, layer in enumerate(backbone.transformer_layers):
            x, layer_cache = layer(x, decoder_attention_mask=attention_mask, self_attention_cache=cache[:, i, ...],
                                   self_attention_cache_update_index=index)
            caches.append(layer_cache)
        logits = backbone.token_embedding(backbone.layer_norm(x[:, -1:, :]), reverse=True)  # (batch, 1, vocab)
        return logits[:, 0, :], ops.stack(caches, axis=1)

    def empty_cache(self, batch: int, length: int):
        import keras

        head_dim = self.backbone.hidden_dim // self.backbone.num_query_heads
        return keras.ops.zeros((batch, self.backbone.num_layers, 2, length, self.backbone.num_key_value_heads,
                                head_dim), dtype=self.causal_lm.compute_dtype)

    def __call__(self, token_ids, cache, index: int, key_mask):
        import tensorflow as tf

        logits, cache = self._forward(tf.constant(token_ids, tf.int32), cache, tf.constant(index, tf.int32),
                                      tf.constant(key_mask, tf.int32))
        return logits.numpy(), cache


def classify_with_cache(causal_lm, prompts: list[list[int]], trie: LabelTrie, batch_size: int = 8,
                        scorer: CachedScorer | None = None, progress: str | None = None) -> list[Prediction]:
    """Constrained greedy decoding, batched: one cached prompt pass, then one cached step per label token.

    `progress` names a tqdm bar (with ETA) over the batches; None shows none.
    """
    from tqdm.auto import tqdm

    scorer = scorer or CachedScorer(causal_lm)
    results: list[Prediction | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", leave=False, disable=progress is None, mininterval=1.0):
        chunk = order[start:start + batch_size]
        length = max(len(prompts[i]) for i in chunk)
        cache_length = length + trie.max_depth
        token_ids = np.zeros((len(chunk), length), dtype=np.int32)  # (batch, length), left-padded
        key_mask = np.ones((len(chunk), cache_length), dtype=np.int32)  # (batch, cache_length)
        for row, i in enumerate(chunk):
            pad = length - len(prompts[i])
            token_ids[row, pad:] = prompts[i]
            key_mask[row, :pad] = 0
        cache = scorer.empty_cache(len(chunk), cache_length)
        next_logits, cache = scorer(token_ids, cache, 0, key_mask)  # (batch, vocab)
        prefixes, logprobs = [()] * len(chunk), [0.0] * len(chunk)
        for depth in range(trie.max_depth):
            feed = step_rows(trie, prefixes, logprobs, next_logits)
            if all(not trie.allowed(p) for p in prefixes):
                break
            next_logits, cache = scorer(np.array(feed, dtype=np.int32)[:, None], cache, length + depth, key_mask)
        for i, prediction in zip(chunk, _finish(trie, prefixes, logprobs)):
            results[i] = prediction
    return results


def right_padded(ids: list[int], sequence_length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(token_ids, padding_mask), each (1, sequence_length): the last `sequence_length` ids, then padding."""
    ids = list(ids)[-sequence_length:]
    token_ids = np.full((1, sequence_length), pad_id, dtype=np.int32)
    token_ids[0, :len(ids)] = ids
    padding_mask = (np.arange(sequence_length) < len(ids)).astype(np.int32)[None, :]
    return token_ids, padding_mask


def classify_with_logits_fn(logits_fn, prompts: list[list[int]], trie: LabelTrie, sequence_length: int,
                            pad_id: int) -> list[Prediction]:
    """Constrained greedy decoding through a fixed-shape full-sequence logits function.

    `logits_fn(token_ids (1, T), padding_mask (1, T)) -> logits (1, T, vocab)`: an exported model
    with no cache. Right padding is safe for a causal model: position i never sees i+1..T.
    """
    predictions = []
    for prompt in prompts:
        prompt = list(prompt)[-(sequence_length - trie.max_depth):]
        prefixes, logprobs = [()], [0.0]
        for _ in range(trie.max_depth):
            sequence = prompt + list(prefixes[0])
            logits = logits_fn(*right_padded(sequence, sequence_length, pad_id))
            step_rows(trie, prefixes, logprobs, logits[:, len(sequence) - 1, :])
            if not trie.allowed(prefixes[0]):
                break
        predictions.extend(_finish(trie, prefixes, logprobs))
    return predictions

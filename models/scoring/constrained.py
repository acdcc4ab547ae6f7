"""Label-constrained classification: a prediction is always a valid label, with a probability.

Every label is scored exactly: log P(its answer tokens (`label_answer`: underscores read as spaces),
then <|im_end|> | prompt) under the model, and
the label distribution is the softmax of those scores over the label set (so top-k and calibration
are of a real distribution, and the argmax equals scoring each label with its own forward pass).

It costs one forward pass per batch of prompts, not one per label: the label set's prefix tree is
flattened and appended to each prompt ("tree attention"). Each tree token attends to the prompt and
to its own ancestors only, and gets the rotary position (prompt length + its depth) it would have
as a plain continuation, so its logits equal those of `prompt + label prefix`. A label's score is
the sum of the log-softmax at its tree edges. Shared prefixes are computed once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np

from models.llm.prompts import format_answer, label_answer
from models.llm.tokenizer import ChatTokenizer


@dataclass
class Prediction:
    label: str
    probability: float
    ranking: list[tuple[str, float]] = field(default_factory=list)  # every label, most probable first
    label_mass: float = 0.0  # P(the unconstrained model's answer is some label)
    log_probabilities: dict[str, float] = field(default_factory=dict)  # unnormalised log P(label answer | prompt)

    def top(self, k: int) -> list[str]:
        return [label for label, _ in self.ranking[:k]]


class LabelTrie:
    """Prefix tree over the token sequences of a label set, flattened for tree attention.

    Internal nodes (proper prefixes) are numbered in insertion order, so every node comes after its
    ancestors. `node_tokens[i]`/`node_depths[i]`: the last token and length - 1 of prefix i.
    Edges: (position, token) pairs, position 0 = the prompt's last token, 1 + i = internal node i;
    `label_edges[l]` lists label l's edges.
    """

    def __init__(self, labels: list[str], tokenizer: ChatTokenizer, answer=label_answer):
        """`answer(label)`: the label's answer text (`make bench-eval` passes `str` for labels as written)."""
        if not labels:
            raise ValueError("the label set is empty")
        self.labels = list(labels)
        self.sequences = [tuple(tokenizer.encode(format_answer(answer(label)))) for label in self.labels]
        first_of: dict[tuple[int, ...], int] = {}
        for index, sequence in enumerate(self.sequences):
            if first_of.setdefault(sequence, index) != index:
                raise ValueError(f"labels {self.labels[first_of[sequence]]!r} and {self.labels[index]!r} are the "
                                 "same answer to the model (underscores are read as spaces)")
        self.max_depth = max(len(s) for s in self.sequences)
        node_of: dict[tuple[int, ...], int] = {(): -1}
        edge_of: dict[tuple[int, int], int] = {}
        self.label_edges: list[list[int]] = []
        for sequence in self.sequences:
            edges = []
            for depth in range(len(sequence)):
                prefix = sequence[:depth]
                if prefix not in node_of:
                    node_of[prefix] = len(node_of) - 1
                edges.append(edge_of.setdefault((node_of[prefix] + 1, sequence[depth]), len(edge_of)))
            self.label_edges.append(edges)
        internal = sorted((index, prefix) for prefix, index in node_of.items() if prefix)
        self.node_tokens = np.array([prefix[-1] for _, prefix in internal], dtype=np.int32)
        self.node_depths = np.array([len(prefix) - 1 for _, prefix in internal], dtype=np.int32)
        parents = [node_of[prefix[:-1]] for _, prefix in internal]
        # (nodes, nodes): node i may attend to node j when j is i or one of its ancestors.
        self.ancestors = np.zeros((len(internal), len(internal)), dtype=np.int32)
        for i, parent in enumerate(parents):
            self.ancestors[i, i] = 1
            if parent >= 0:
                self.ancestors[i] |= self.ancestors[parent]
        self.edge_positions = np.array([position for position, _ in edge_of], dtype=np.int32)
        self.edge_tokens = np.array([token for _, token in edge_of], dtype=np.int32)
        self.label_edge_matrix = np.zeros((len(self.labels), len(edge_of)), dtype=np.float64)  # (labels, edges)
        for label, edges in enumerate(self.label_edges):
            self.label_edge_matrix[label, edges] = 1.0

    @property
    def num_nodes(self) -> int:
        return len(self.node_tokens)

    def predictions(self, log_probs: np.ndarray) -> list[Prediction]:
        """Predictions from the log-probabilities of every edge, (batch, edges)."""
        edges = self.label_edge_matrix.shape[1]  # columns past it are fixed-shape padding
        scores = log_probs[:, :edges].astype(np.float64) @ self.label_edge_matrix.T  # (batch, labels)
        results = []
        for row in scores:
            top = row.max()
            probabilities = np.exp(row - top)
            mass = probabilities.sum()
            probabilities /= mass
            order = np.argsort(-probabilities, kind="stable")
            ranking = [(self.labels[i], float(probabilities[i])) for i in order]
            results.append(Prediction(ranking[0][0], ranking[0][1], ranking, float(np.exp(top) * mass),
                                      dict(zip(self.labels, map(float, row)))))
        return results


def tree_inputs(prompts: list[list[int]], trie: LabelTrie, prompt_length: int | None = None,
                num_nodes: int | None = None, num_edges: int | None = None) -> dict[str, np.ndarray]:
    """Left-padded prompts with the flattened tree appended, their positions and attention masks.

    token_ids (batch, P + N); positions (P + N,); attention_mask (batch, P + N, P + N), 1 = may attend;
    edge_positions (E,) as indices into the sequence, edge_tokens (E,). P, N and E default to this
    batch's own sizes; fixed-shape exports pass larger ones: padding nodes attend only to themselves
    and padding edges repeat the first edge, and both are ignored by `LabelTrie.predictions`.
    """
    longest = max(len(p) for p in prompts)
    length = prompt_length or longest
    nodes, edges = num_nodes or trie.num_nodes, num_edges or len(trie.edge_tokens)
    if longest > length or trie.num_nodes > nodes or len(trie.edge_tokens) > edges:
        raise ValueError(f"a {longest}-token prompt with a {trie.num_nodes}-node label tree does not fit the "
                         f"fixed shapes ({length} prompt tokens, {nodes} nodes, {edges} edges)")
    total = length + nodes
    token_ids = np.zeros((len(prompts), total), dtype=np.int32)
    key_mask = np.ones((len(prompts), total), dtype=np.int32)
    for row, prompt in enumerate(prompts):
        pad = length - len(prompt)
        token_ids[row, pad:length] = prompt
        key_mask[row, :pad] = 0
    token_ids[:, length:length + trie.num_nodes] = trie.node_tokens
    depths = np.zeros(nodes, dtype=np.int32)
    depths[:trie.num_nodes] = trie.node_depths
    structure = np.tril(np.ones((total, total), dtype=np.int32))  # prompt rows: causal
    structure[length:, length:] = np.eye(nodes, dtype=np.int32)
    structure[length:length + trie.num_nodes, length:length + trie.num_nodes] = trie.ancestors
    edge_positions = np.full(edges, length - 1 + trie.edge_positions[0], dtype=np.int32)
    edge_positions[:len(trie.edge_tokens)] = length - 1 + trie.edge_positions
    edge_tokens = np.full(edges, trie.edge_tokens[0], dtype=np.int32)
    edge_tokens[:len(trie.edge_tokens)] = trie.edge_tokens
    return {"token_ids": token_ids, "positions": np.concatenate([np.arange(length), length + depths]).astype(np.int32),
            "attention_mask": structure[None, :, :] * key_mask[:, None, :],
            "edge_positions": edge_positions, "edge_tokens": edge_tokens}


@contextlib.contextmanager
def _rotary_positions(backbone, positions):
    """Make every attention layer rotate queries and keys by `positions` instead of 0..L-1.

    keras-hub's attention layer passes only a start index to its rotary layer; its rotary layer
    itself takes explicit positions. Patched for the duration of one trace.
    """
    layers = [layer._self_attention_layer for layer in backbone.transformer_layers]
    originals = [layer.rotary_embedding_layer for layer in layers]
    try:
        for layer, rotary in zip(layers, originals):
            object.__setattr__(layer, "rotary_embedding_layer",
                               lambda x, start_index=0, rotary=rotary: rotary(x, positions=positions))
        yield
    finally:
        for layer, rotary in zip(layers, originals):
            object.__setattr__(layer, "rotary_embedding_layer", rotary)


def edge_log_probs(causal_lm, token_ids, positions, attention_mask, edge_positions, edge_tokens, head_start=None):
    """(batch, edges) log-softmax of each edge's token at its position: the traced core of tree scoring.

    Fixed-shape friendly (the SavedModel/TFLite export traces it too). Edges leave the root (the prompt's
    last token) and the tree nodes after it, several per node: the vocabulary head runs once per position
    from the root on, not once per edge. `head_start` is the root's position (a Python int keeps an
    export's shapes static); None reads it from `edge_positions`.
    """
    import tensorflow as tf

    backbone = causal_lm.backbone
    x = backbone.token_embedding(token_ids)  # (batch, length, hidden)
    with _rotary_positions(backbone, positions):
        for layer in backbone.transformer_layers:
            x = layer(x, decoder_attention_mask=attention_mask)
    start = tf.reduce_min(edge_positions) if head_start is None else head_start
    x = backbone.layer_norm(x[:, start:])  # (batch, 1 + nodes, hidden)
    logits = tf.cast(backbone.token_embedding(x, reverse=True), tf.float32)  # (batch, 1 + nodes, vocab)
    rows = edge_positions - start
    flat = tf.reshape(logits, [tf.shape(logits)[0], -1])
    picked = tf.gather(flat, rows * tf.shape(logits)[-1] + edge_tokens, axis=1)  # (batch, edges)
    return picked - tf.gather(tf.reduce_logsumexp(logits, axis=-1), rows, axis=1)


class TreeScorer:
    """Log-probabilities of every label-tree edge for a batch of prompts, in one traced forward pass."""

    def __init__(self, causal_lm):
        import tensorflow as tf

        self._forward = tf.function(lambda *inputs: edge_log_probs(causal_lm, *inputs), input_signature=[
            tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None, None, None], tf.int32), tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.int32)])

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self._forward(inputs["token_ids"], inputs["positions"], inputs["attention_mask"],
                             inputs["edge_positions"], inputs["edge_tokens"]).numpy()


def classify(causal_lm, prompts: list[list[int]], trie: LabelTrie, batch_size: int = 8,
             scorer: TreeScorer | None = None, progress: str | None = None) -> list[Prediction]:
    """Exact label scores for every prompt, batched (prompts of similar length share a batch).

    `progress` names a tqdm bar (with ETA) over the batches; None shows none.
    """
    scorer = scorer or TreeScorer(causal_lm)
    return classify_in_batches(prompts, trie, lambda chunk: scorer(tree_inputs(chunk, trie)), batch_size, progress)


def classify_in_batches(prompts: list[list[int]], trie: LabelTrie, edge_log_probs, batch_size: int,
                        progress: str | None = None) -> list[Prediction]:
    """A Prediction per prompt, in order, from `edge_log_probs(prompts chunk) -> (chunk, edges)` run on
    batches of similar length (sorted first, so little padding); `progress` names a tqdm bar."""
    from tqdm.auto import tqdm

    results: list[Prediction | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", leave=False, disable=progress is None, mininterval=1.0):
        chunk = order[start:start + batch_size]
        for i, prediction in zip(chunk, trie.predictions(edge_log_probs([prompts[i] for i in chunk]))):
            results[i] = prediction
    return results


def log_normaliser(logits: np.ndarray) -> np.ndarray:
    """log sum exp over the last axis (float64, shifted by the max so large logits do not overflow)."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(axis=-1, keepdims=True)
    return top[..., 0] + np.log(np.exp(logits - top).sum(axis=-1))


def cached_hidden_states(backbone, token_ids, cache, index, attention_mask=None):
    """(hidden states (batch, query, hidden), updated cache) of `token_ids` written at cache position `index`.

    keras-hub's layers do the caching and the causal mask (query i sees keys <= index + i), so with
    right-padded prompts the garbage past the current position is never attended.
    """
    from keras import ops

    x = backbone.token_embedding(token_ids)
    caches = []
    for i, layer in enumerate(backbone.transformer_layers):
        x, layer_cache = layer(x, decoder_attention_mask=attention_mask, self_attention_cache=cache[:, i, ...],
                               self_attention_cache_update_index=index)
        caches.append(layer_cache)
    return x, ops.stack(caches, axis=1)


def last_token_logits(backbone, hidden):
    """(batch, vocab) next-token logits from (batch, hidden) final hidden states."""
    return backbone.token_embedding(backbone.layer_norm(hidden[:, None, :]), reverse=True)[:, 0, :]


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

        query_length = ops.shape(token_ids)[1]
        # (batch, query, cache_length): each query may see every unmasked key; the layer adds causality.
        attention_mask = ops.repeat(key_mask[:, None, :], query_length, axis=1)
        x, cache = cached_hidden_states(self.backbone, token_ids, cache, index, attention_mask)
        return last_token_logits(self.backbone, x[:, -1, :]), cache

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


def right_padded(ids: list[int], sequence_length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(token_ids, padding_mask), each (1, sequence_length): the last `sequence_length` ids, then padding."""
    ids = list(ids)[-sequence_length:]
    token_ids = np.full((1, sequence_length), pad_id, dtype=np.int32)
    token_ids[0, :len(ids)] = ids
    padding_mask = (np.arange(sequence_length) < len(ids)).astype(np.int32)[None, :]
    return token_ids, padding_mask


def classify_with_logits_fn(logits_fn, prompts: list[list[int]], trie: LabelTrie, sequence_length: int,
                            pad_id: int) -> list[Prediction]:
    """The same exact label scores through a fixed-shape, full-sequence logits function.

    `logits_fn(token_ids (1, T), padding_mask (1, T)) -> logits (1, T, vocab)`: an exported model
    with no cache or tree inputs, so each label costs one forward pass (the slow reference path).
    Right padding is safe for a causal model: position i never sees i+1..T.
    """
    predictions = []
    for prompt in prompts:
        prompt = list(prompt)[-(sequence_length - trie.max_depth):]
        edge_log_probs = np.zeros((1, len(trie.edge_tokens)))
        for sequence, edges in zip(trie.sequences, trie.label_edges):
            logits = logits_fn(*right_padded(prompt + list(sequence), sequence_length, pad_id))[0]
            steps = logits[len(prompt) - 1:len(prompt) - 1 + len(sequence)].astype(np.float64)  # (len, vocab)
            edge_log_probs[0, edges] = steps[np.arange(len(sequence)), sequence] - log_normaliser(steps)
        predictions.extend(trie.predictions(edge_log_probs))
    return predictions

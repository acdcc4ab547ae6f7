"""The KV-cache forward pass the exported `prefill`/`decode` signatures run, and the cache that stays put.

Why not keras-hub's own `call_with_cache` path: converted to TFLite, its cache handling spent most of
each decode step outside the matmuls (reference STRIDED_SLICE copying element by element, TILE and
TRANSPOSE of every cached key, per layer and token). The next layout, one [2 * layers, kv heads,
positions, head dim] tensor passed in and out, still moved the whole cache (11.8 MB for SmolLM2-135M
at 256 positions) four times per token: through Python in and out, one SPLIT into layers and one
CONCATENATION back (15% of an int8 step in the graph, plus ~20% in the Python copies; `perf`).

This layout moves none of it. The cache is one key and one value tensor per layer, graph *inputs*
only: the graph reads them and returns just the keys and values of the tokens it was given
(`new_keys`/`new_values`, [layers, kv heads, T, head dim]). The caller writes those rows into the
cache where it lives, the interpreter's own input tensors (`models.export.exported`), so a decode
step moves one token's keys and values (46 KB for SmolLM2-135M), not the cache. Nothing in the graph
writes an input, so the cache stays valid between invocations whatever the runtime does in place.

Attention of T new tokens at positions index .. index + T - 1 is one softmax over the cache positions
< index (earlier tokens) and the new tokens up to itself: the two score blocks are concatenated
(a [kv heads, groups * T, positions + T] tensor, small) and the probabilities split again. Keys are
stored [kv heads, positions, head dim] and values transposed, [kv heads, head dim, positions], so both
batched matmuls take their cache operand as `transpose_b`, the layout XNNPACK packs fastest. Grouped-query
attention is a batched matmul per kv head (queries of a group stacked, no repeat).
`prefill` has no cache inputs at all: its tokens attend to each other only.

`decode_batch` (`batched_decode_forward`) is `decode` for B independent sequences at once, each at its own
position: every cache input gains a leading row dimension. One decode step of one token is bound by
reading the weights (int8: 135 MB for SmolLM2-135M, once per step whatever B is), so B rows cost little
more than one; prefill stays one prompt at a time (it is compute-bound: B prompts cost B times one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KEY_CACHE, VALUE_CACHE = "key_cache", "value_cache"
NEW_KEYS, NEW_VALUES = "new_keys", "new_values"


@dataclass(frozen=True)
class CacheLayout:
    """Sizes of a decoder's cache: one key and one value tensor per layer."""

    num_layers: int
    kv_heads: int
    positions: int
    head_dim: int
    rows: int = 0  # > 0: a batched signature's cache, one row per sequence (leading dimension)

    @classmethod
    def of(cls, backbone, positions: int, rows: int = 0) -> CacheLayout:
        return cls(backbone.num_layers, backbone.num_key_value_heads, positions,
                   backbone.hidden_dim // backbone.num_query_heads, rows)

    @classmethod
    def from_input_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> CacheLayout:
        """The layout of a `decode` signature, from its input shapes {name: shape}."""
        layers = sum(name.startswith(KEY_CACHE) for name in shapes)
        if not layers:
            raise ValueError("this decode signature has no per-layer key_cache inputs: it was exported by an "
                             "older fintune (one `cache` tensor passed in and out); export the model again")
        shape = tuple(map(int, shapes[cache_names(layers)[0][0]]))
        rows, (kv_heads, positions, head_dim) = (shape[0], shape[1:]) if len(shape) == 4 else (0, shape)
        return cls(layers, kv_heads, positions, head_dim, rows)

    @property
    def key_shape(self) -> tuple[int, ...]:
        return (self.rows,) * bool(self.rows) + (self.kv_heads, self.positions, self.head_dim)

    @property
    def value_shape(self) -> tuple[int, ...]:
        return (self.rows,) * bool(self.rows) + (self.kv_heads, self.head_dim, self.positions)

    @property
    def bytes(self) -> int:
        return 2 * max(self.rows, 1) * self.num_layers * self.kv_heads * self.positions * self.head_dim * 4


def cache_names(num_layers: int) -> tuple[list[str], list[str]]:
    """(key input names, value input names), zero-padded so that name order is layer order: runtimes and
    `benchmark_model` list a signature's inputs alphabetically."""
    width = len(str(num_layers - 1))
    return ([f"{KEY_CACHE}_{i:0{width}d}" for i in range(num_layers)],
            [f"{VALUE_CACHE}_{i:0{width}d}" for i in range(num_layers)])


class HostCache:
    """The decoder's cache as numpy arrays, for runtimes that take every input per call (the SavedModel):
    `keys` [layers, kv, positions, D], `values` [layers, kv, D, positions]; `inputs` names each layer's slice."""

    def __init__(self, layout: CacheLayout):
        self.layout = layout
        self.keys = np.zeros((layout.num_layers, *layout.key_shape), np.float32)
        self.values = np.zeros((layout.num_layers, *layout.value_shape), np.float32)
        key_names, value_names = cache_names(layout.num_layers)
        self.inputs = {**dict(zip(key_names, self.keys)), **dict(zip(value_names, self.values))}

    def write(self, new_keys: np.ndarray, new_values: np.ndarray, index: int, count: int | None = None,
              row: int | None = None) -> None:
        write_rows(self.keys, self.values, new_keys, new_values, index, count, row)


def write_rows(keys, values, new_keys: np.ndarray, new_values: np.ndarray, index: int, count: int | None = None,
               row: int | None = None):
    """Store the first `count` (default all) of the T rows of `new_keys`/`new_values` [layers, kv, T, D] at
    positions index .. index + count - 1 of per-layer `keys` [kv, C, D] and `values` [kv, D, C] (arrays
    or sequences of per-layer arrays), or of sequence `row` of a batched cache ([B, kv, C, D], [B, kv, D, C])."""
    count = new_keys.shape[2] if count is None else count
    positions = keys[0].shape[-2]
    if not 0 <= index <= index + count <= positions:
        raise ValueError(f"cache positions {index}..{index + count - 1} are outside 0..{positions - 1}")
    for layer in range(len(keys)):
        layer_keys, layer_values = keys[layer], values[layer]
        if row is not None:
            layer_keys, layer_values = layer_keys[row], layer_values[row]
        layer_keys[:, index:index + count, :] = new_keys[layer, :, :count, :]
        layer_values[:, :, index:index + count] = np.swapaxes(new_values[layer, :, :count, :], 1, 2)


def write_step(keys, values, new_keys: np.ndarray, new_values: np.ndarray, indexes: np.ndarray):
    """Store one decode step of a batched cache: row b's new key and value ([layers, B, kv, 1, D]) at its own
    position indexes[b], in per-layer `keys` [B, kv, C, D] and `values` [B, kv, D, C]."""
    rows, indexes = np.arange(len(indexes)), np.asarray(indexes)
    if indexes.min() < 0 or indexes.max() >= keys[0].shape[-2]:
        raise ValueError(f"cache positions {indexes.tolist()} are outside 0..{keys[0].shape[-2] - 1}")
    for layer in range(len(keys)):  # advanced indices (rows, indexes) pair up: [B, kv, D] each
        keys[layer][rows, :, indexes, :] = new_keys[layer, :, :, 0, :]
        values[layer][rows, :, :, indexes] = new_values[layer, :, :, 0, :]


def _feedforward(layer, x):
    """A transformer layer's gated MLP on its normed input (the activation in float32, as keras-hub runs it)."""
    import tensorflow as tf

    h = layer._feedforward_layernorm(x)
    gate = tf.cast(layer.activation(tf.cast(layer._feedforward_gate_dense(h), tf.float32)), h.dtype)
    return layer._feedforward_output_dense(layer._feedforward_intermediate_dense(h) * gate)


def cached_forward(backbone, token_ids, index, caches: tuple[list, list] | None = None):
    """(final hidden states [1, T, hidden] before the output norm, new keys, new values [layers, kv, T, D])
    for `token_ids` [1, T] at positions index .. index + T - 1, attending to `caches` = (per-layer keys
    [kv, C, D], per-layer transposed values [kv, D, C]) at positions < index, or to nothing else when
    `caches` is None (prefill).
    """
    import tensorflow as tf

    length = token_ids.shape[1]
    kv_heads = backbone.num_key_value_heads
    head_dim = backbone.hidden_dim // backbone.num_query_heads
    groups = backbone.num_query_heads // kv_heads
    # Row (g, t) of a kv head's stacked queries: new token j is visible when j <= t; cache position c when c < index.
    own = tf.tile(tf.range(length)[None, :] <= tf.range(length)[:, None], [groups, 1])  # [groups * T, T]
    if caches is not None:
        positions = caches[0][0].shape[1]
        earlier = tf.range(positions)[None, None, :] < index  # [1, 1, C]
    x = backbone.token_embedding(token_ids)
    new_keys, new_values = [], []
    for i, layer in enumerate(backbone.transformer_layers):
        attention = layer._self_attention_layer
        h = layer._self_attention_layernorm(x)
        query = attention.rotary_embedding_layer(attention._query_dense(h), start_index=index)  # [1, T, heads, D]
        key = attention.rotary_embedding_layer(attention._key_dense(h), start_index=index)  # [1, T, kv, D]
        value = attention._value_dense(h)
        # Reshapes drop the leading 1: indexing ([0]) would be a slow reference STRIDED_SLICE in TFLite.
        key = tf.transpose(tf.reshape(key, [length, kv_heads, head_dim]), [1, 0, 2])  # [kv, T, D]
        value = tf.transpose(tf.reshape(value, [length, kv_heads, head_dim]), [1, 0, 2])
        new_keys.append(key)
        new_values.append(value)
        # Query head u uses kv head u // groups (keras-hub repeats keys that way).
        grouped = tf.reshape(tf.transpose(tf.reshape(query, [length, kv_heads, groups, head_dim]), [1, 2, 0, 3]),
                             [kv_heads, groups * length, head_dim])
        scores = tf.matmul(grouped, key, transpose_b=True) * attention._inv_norm_factor  # [kv, groups * T, T]
        scores = tf.where(own, tf.cast(scores, tf.float32), tf.float32.min)
        if caches is None:
            probabilities = tf.cast(tf.nn.softmax(scores, axis=-1), value.dtype)
            context = tf.matmul(probabilities, value)  # [kv, groups * T, D]
        else:
            key_cache, value_cache = caches[0][i], caches[1][i]
            cached = tf.matmul(grouped, key_cache, transpose_b=True) * attention._inv_norm_factor  # [kv, G*T, C]
            cached = tf.where(earlier, tf.cast(cached, tf.float32), tf.float32.min)
            probabilities = tf.cast(tf.nn.softmax(tf.concat([cached, scores], axis=-1), axis=-1), value.dtype)
            from_cache, from_new = tf.split(probabilities, [positions, length], axis=-1)
            context = (tf.matmul(from_cache, value_cache, transpose_b=True)  # values are stored transposed
                       + tf.matmul(from_new, value))
        context = tf.reshape(tf.transpose(tf.reshape(context, [kv_heads, groups, length, head_dim]), [2, 0, 1, 3]),
                             [1, length, kv_heads * groups, head_dim])
        x = x + attention._output_dense(context)
        x = x + _feedforward(layer, x)
    return x, tf.stack(new_keys), tf.stack(new_values)


def batched_decode_forward(backbone, token_ids, indexes, caches: tuple[list, list]):
    """`cached_forward` of one token for each of B sequences, each at its own position: (final hidden states
    [B, 1, hidden] before the output norm, new keys, new values [layers, B, kv, 1, D]) of `token_ids` [B, 1]
    at positions `indexes` [B], attending to `caches` = (per-layer keys [B, kv, C, D], per-layer transposed
    values [B, kv, D, C]) at positions < indexes[b] of row b, and to itself.
    """
    import tensorflow as tf

    rows = token_ids.shape[0]
    kv_heads = backbone.num_key_value_heads
    head_dim = backbone.hidden_dim // backbone.num_query_heads
    groups = backbone.num_query_heads // kv_heads
    positions = caches[0][0].shape[-2]
    earlier = tf.range(positions)[None, None, None, :] < indexes[:, None, None, None]  # [B, 1, 1, C]
    at = indexes[:, None]  # [B, 1]: each row's rotary position
    x = backbone.token_embedding(token_ids)
    new_keys, new_values = [], []
    for i, layer in enumerate(backbone.transformer_layers):
        attention = layer._self_attention_layer
        h = layer._self_attention_layernorm(x)
        query = attention.rotary_embedding_layer(attention._query_dense(h), positions=at)  # [B, 1, heads, D]
        key = attention.rotary_embedding_layer(attention._key_dense(h), positions=at)  # [B, 1, kv, D]
        # One token per row: [B, 1, kv, D] -> [B, kv, 1, D] is a reshape, no transpose.
        key = tf.reshape(key, [rows, kv_heads, 1, head_dim])
        value = tf.reshape(attention._value_dense(h), [rows, kv_heads, 1, head_dim])
        new_keys.append(key)
        new_values.append(value)
        grouped = tf.reshape(query, [rows, kv_heads, groups, head_dim])  # query head u uses kv head u // groups
        own = tf.matmul(grouped, key, transpose_b=True) * attention._inv_norm_factor  # [B, kv, groups, 1]
        cached = tf.matmul(grouped, caches[0][i], transpose_b=True) * attention._inv_norm_factor  # [B, kv, G, C]
        cached = tf.where(earlier, tf.cast(cached, tf.float32), tf.float32.min)
        probabilities = tf.nn.softmax(tf.concat([cached, tf.cast(own, tf.float32)], axis=-1), axis=-1)
        from_cache, from_new = tf.split(tf.cast(probabilities, value.dtype), [positions, 1], axis=-1)
        context = tf.matmul(from_cache, caches[1][i], transpose_b=True) + from_new * value  # [B, kv, groups, D]
        x = x + attention._output_dense(tf.reshape(context, [rows, 1, kv_heads * groups, head_dim]))
        x = x + _feedforward(layer, x)
    return x, tf.stack(new_keys), tf.stack(new_values)

"""The KV-cache forward pass the exported `prefill`/`decode` signatures run.

Why not keras-hub's own `call_with_cache` path: converted to TFLite, its cache handling spends
most of each decode step outside the matmuls. Measured on the int8 file with `perf` (2 cores,
78 ms per token): 56% in TFLite's reference STRIDED_SLICE kernel (it copies element by element),
slicing every layer's cache out of the 6-D [1, layers, 2, positions, kv heads, head dim] tensor and
keys/values out of each layer's 5-D slice; plus TILE (grouped-query heads repeated over the whole
cache) and TRANSPOSE of every cached key, per layer and token. The matmuls alone take ~15 ms.

This pass uses keras-hub's own sublayers (the same weights and maths: projections, rotary
embedding, norms, gated MLP) and only lays the cache out for cheap TFLite ops:
`cache` is [2 * layers, kv heads, positions, head dim] (layer i's keys at 2i, values at 2i + 1).
One SPLIT hands out the per-layer pieces, DYNAMIC_UPDATE_SLICE writes the new keys/values into a
piece, grouped-query attention is a batched matmul per kv head (queries of a group stacked, no
repeat), and one CONCATENATION returns the cache.
"""

from __future__ import annotations


def cache_spec(backbone, positions: int) -> list[int]:
    """Shape of the exported cache tensor for `positions` cached tokens."""
    head_dim = backbone.hidden_dim // backbone.num_query_heads
    return [2 * backbone.num_layers, backbone.num_key_value_heads, positions, head_dim]


def cached_forward(backbone, token_ids, cache, index):
    """(final hidden states [1, T, hidden] before the output norm, updated cache) for `token_ids` [1, T]
    written at cache positions index .. index + T - 1.

    Query t attends to cache positions <= index + t, so with a right-padded prompt the garbage written
    past the real tokens is never seen, and decoding overwrites it.
    """
    import tensorflow as tf
    from keras import ops

    length = token_ids.shape[1]
    kv_heads, positions, head_dim = cache.shape[1], cache.shape[2], cache.shape[3]
    groups = backbone.num_query_heads // kv_heads
    query_positions = index + tf.range(length)
    # [1, groups * T, positions]: row (g, t) may see key c when c <= index + t.
    visible = tf.range(positions)[None, :] <= query_positions[:, None]
    visible = tf.reshape(tf.tile(visible[None], [groups, 1, 1]), [1, groups * length, positions])
    pieces = tf.split(cache, 2 * backbone.num_layers, axis=0)
    x = backbone.token_embedding(token_ids)
    updated = []
    for i, layer in enumerate(backbone.transformer_layers):
        attention = layer._self_attention_layer
        h = layer._self_attention_layernorm(x)
        query = attention.rotary_embedding_layer(attention._query_dense(h), start_index=index)  # [1, T, heads, D]
        key = attention.rotary_embedding_layer(attention._key_dense(h), start_index=index)  # [1, T, kv, D]
        value = attention._value_dense(h)
        start = [0, 0, index, 0]
        keys = ops.slice_update(pieces[2 * i], start, tf.transpose(key, [0, 2, 1, 3]))  # DYNAMIC_UPDATE_SLICE
        values = ops.slice_update(pieces[2 * i + 1], start, tf.transpose(value, [0, 2, 1, 3]))
        updated += [keys, values]
        # Query head u uses kv head u // groups (keras-hub repeats keys that way): stack each kv head's
        # queries as [kv, groups * T, D] and attend with one batched matmul per kv head.
        grouped = tf.reshape(tf.transpose(tf.reshape(query, [length, kv_heads, groups, head_dim]), [1, 2, 0, 3]),
                             [kv_heads, groups * length, head_dim])
        # Reshapes drop the leading 1: indexing ([0]) would be a slow reference STRIDED_SLICE in TFLite.
        scores = tf.matmul(grouped, tf.reshape(keys, keys.shape[1:]), transpose_b=True) * attention._inv_norm_factor
        scores = tf.where(visible, tf.cast(scores, tf.float32), tf.float32.min)
        probabilities = tf.cast(tf.nn.softmax(scores, axis=-1), values.dtype)
        context = tf.matmul(probabilities, tf.reshape(values, values.shape[1:]))  # [kv, groups * T, D]
        context = tf.reshape(tf.transpose(tf.reshape(context, [kv_heads, groups, length, head_dim]), [2, 0, 1, 3]),
                             [1, length, kv_heads * groups, head_dim])
        x = x + attention._output_dense(context)
        h = layer._feedforward_layernorm(x)
        gate = tf.cast(layer.activation(tf.cast(layer._feedforward_gate_dense(h), tf.float32)), h.dtype)
        x = x + layer._feedforward_output_dense(layer._feedforward_intermediate_dense(h) * gate)
    return x, tf.concat(updated, axis=0)


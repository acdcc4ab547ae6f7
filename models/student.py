"""The on-device student: a small decoder-only LM as a tf-keras (Keras 2) functional model.

Why tf-keras and not Keras 3 like the teacher: TF-MOT (pruning, quantisation-aware training)
supports only Keras 2, and it wraps layers of a *functional* model by cloning it, so every weight
lives in a top-level `Dense` or `Embedding` layer that `prune_low_magnitude` and
`quantize_annotate_layer` can wrap. The parameter-free parts (positions, causal attention) are
two small registered layers.

The student shares the teacher's tokenizer and ChatML prompt format: token ids [B, T] int32 in,
next-token logits [B, T, V] out, so label scoring (`models.constrained.classify_with_logits_fn`)
and distillation over the teacher's vocabulary apply unchanged.

Everything in the graph has an int8 TFLite builtin kernel (GATHER, FULLY_CONNECTED, BATCH_MATMUL,
SOFTMAX, REDUCE_MIN, SELECT_V2, MEAN/RSQRT for layer norm, GELU), so full-integer conversion
needs no Flex op. The causal mask is the one int8-specific choice, see `CausalAttention`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf
import tf_keras

MASK_MARGIN = 16.0  # masked scores sit this far below the row's lowest score: weight <= e^-16 each


@dataclass
class StudentConfig:
    """Shape of the student decoder."""

    vocabulary_size: int  # the teacher tokenizer's size (token ids are shared)
    num_layers: int = 4  # transformer blocks
    hidden_dim: int = 128  # width of the residual stream
    num_heads: int = 4  # attention heads; hidden_dim must divide by it
    mlp_dim: int = 512  # width of each block's MLP
    max_length: int = 256  # longest input (prompt + answer) the position table covers
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        sizes = {"vocabulary_size": self.vocabulary_size, "num_layers": self.num_layers,
                 "hidden_dim": self.hidden_dim, "num_heads": self.num_heads, "mlp_dim": self.mlp_dim,
                 "max_length": self.max_length}
        bad = {k: v for k, v in sizes.items() if not isinstance(v, (int, np.integer)) or v < 1}
        if bad:
            raise ValueError(f"student sizes must be positive integers, got {bad}")
        if self.hidden_dim % self.num_heads or (self.hidden_dim // self.num_heads) % 2:
            raise ValueError(f"hidden_dim {self.hidden_dim} must split into {self.num_heads} heads of an even size")

    def check_fits(self, vocabulary_size: int, sequence_length: int | None = None) -> None:
        """Raise ValueError unless every token id of the tokenizer and every input length fit this student."""
        if self.vocabulary_size < vocabulary_size:
            raise ValueError(f"the student's vocabulary_size {self.vocabulary_size} is smaller than the tokenizer's "
                             f"{vocabulary_size} tokens; it must cover every token id the teacher uses")
        if sequence_length is not None and sequence_length > self.max_length:
            raise ValueError(f"inputs of {sequence_length} tokens do not fit the student's max_length "
                             f"{self.max_length}; raise max_length or shorten the prompts")

    def parameter_count(self) -> int:
        """Weights of `build_student(self)`, counted from the shapes (equals `model.count_params()`)."""
        d, m, v = self.hidden_dim, self.mlp_dim, self.vocabulary_size
        block = 2 * 2 * d + 4 * (d * d + d) + (d * m + m) + (m * d + d)  # 2 norms, q/k/v/o, MLP in/out
        return v * d + self.num_layers * block + 2 * d + (d * v + v)  # embedding, blocks, final norm, head

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoid_table(length: int, dim: int) -> np.ndarray:
    """(length, dim) fixed sine/cosine position codes (Vaswani et al.): no weights to train or prune."""
    positions = np.arange(length)[:, None]
    frequencies = np.exp(-math.log(10000.0) * np.arange(0, dim, 2) / dim)[None, :]
    table = np.zeros((length, dim), dtype=np.float32)
    table[:, 0::2] = np.sin(positions * frequencies)
    table[:, 1::2] = np.cos(positions * frequencies)
    return table


@tf_keras.utils.register_keras_serializable(package="fintune")
class AddPositions(tf_keras.layers.Layer):
    """x + fixed sinusoidal position codes of positions 0..T-1."""

    def __init__(self, max_length: int, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length

    def build(self, input_shape):
        self.table = tf.constant(sinusoid_table(self.max_length, int(input_shape[-1])))
        super().build(input_shape)

    def call(self, x):  # (batch, seq, hidden)
        return x + self.table[:tf.shape(x)[1]][None, :, :]

    def get_config(self):
        return {**super().get_config(), "max_length": self.max_length}


@tf_keras.utils.register_keras_serializable(package="fintune")
class CausalAttention(tf_keras.layers.Layer):
    """Multi-head causal scaled dot-product attention of already projected (query, key, value).

    No weights: the projections are top-level `Dense` layers so TF-MOT can wrap them. The mask
    does not add a huge negative constant: in full-integer int8 one quantisation range covers the
    masked and real scores, and a -1e9 would leave all real scores on one int8 step. Masked scores
    are set just below the row's lowest score instead (`MASK_MARGIN`), so the range grows a little.
    """

    def __init__(self, num_heads: int, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads

    def _heads(self, x, length):  # (batch, seq, hidden) -> (batch, heads, seq, head_dim)
        x = tf.reshape(x, [-1, length, self.num_heads, x.shape[-1] // self.num_heads])
        return tf.transpose(x, [0, 2, 1, 3])

    def call(self, inputs):
        query, key, value = inputs  # each (batch, seq, hidden)
        length, hidden = tf.shape(query)[1], query.shape[-1]
        q, k, v = (self._heads(x, length) for x in (query, key, value))
        q = q * (1.0 / math.sqrt(hidden // self.num_heads))
        scores = tf.matmul(q, k, transpose_b=True)  # (batch, heads, seq, seq)
        causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)  # constant once T is fixed
        floor = tf.reduce_min(scores, axis=-1, keepdims=True) - MASK_MARGIN
        weights = tf.nn.softmax(tf.where(causal, scores, floor), axis=-1)
        context = tf.matmul(weights, v)  # (batch, heads, seq, head_dim)
        return tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [-1, length, hidden])

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}


def build_student(config: StudentConfig, seed: int = 0) -> tf_keras.Model:
    """A pre-norm GPT-style decoder: token ids (batch, seq) int32 -> logits (batch, seq, vocab)."""
    tf_keras.utils.set_random_seed(seed)
    dense = tf_keras.layers.Dense
    seeds = itertools.count(seed * 10_000)

    def init(stddev=0.02):  # GPT-2's initialisation; one seeded initializer per layer (a shared one repeats)
        return tf_keras.initializers.RandomNormal(stddev=stddev, seed=next(seeds))

    token_ids = tf_keras.Input(shape=(None,), dtype="int32", name="token_ids")
    x = tf_keras.layers.Embedding(config.vocabulary_size, config.hidden_dim, embeddings_initializer=init(),
                                  name="token_embedding")(token_ids)  # (batch, seq, hidden)
    x = AddPositions(config.max_length, name="positions")(x)
    for i in range(config.num_layers):
        h = tf_keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, name=f"block{i}_attention_norm")(x)
        q, k, v = (dense(config.hidden_dim, kernel_initializer=init(), name=f"block{i}_{n}")(h)
                   for n in ("query", "key", "value"))
        h = CausalAttention(config.num_heads, name=f"block{i}_attention")([q, k, v])
        out_std = 0.02 / math.sqrt(2 * config.num_layers)  # GPT-2: smaller init where blocks write the residual
        x = tf_keras.layers.Add(name=f"block{i}_attention_residual")(
            [x, dense(config.hidden_dim, kernel_initializer=init(out_std), name=f"block{i}_attention_output")(h)])
        h = tf_keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, name=f"block{i}_mlp_norm")(x)
        h = dense(config.mlp_dim, activation="gelu", kernel_initializer=init(), name=f"block{i}_mlp_in")(h)
        x = tf_keras.layers.Add(name=f"block{i}_mlp_residual")(
            [x, dense(config.hidden_dim, kernel_initializer=init(out_std), name=f"block{i}_mlp_out")(h)])
    x = tf_keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, name="final_norm")(x)
    logits = dense(config.vocabulary_size, kernel_initializer=init(), name="lm_head")(x)  # (batch, seq, vocab)
    return tf_keras.Model(token_ids, logits, name="student")


def student_logits_fn(student):
    """The student behind `models.export`'s (token_ids, padding_mask) -> logits interface.

    The mask is not needed: inputs are right-padded and the student is causal.
    """
    forward = tf.function(lambda ids: student(ids, training=False))

    def logits(token_ids, padding_mask=None):
        return forward(tf.constant(token_ids, tf.int32)).numpy()

    return logits

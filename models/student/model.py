"""The on-device student: a small decoder that scores a task's labels, as a tf-keras (Keras 2) functional model.

Why tf-keras and not Keras 3 like the teacher: TF-MOT (pruning, quantisation-aware training)
supports only Keras 2, and it wraps layers of a *functional* model by cloning it, so every weight
lives in a top-level `Dense` or `Embedding` layer that `prune_low_magnitude` and
`quantize_annotate_layer` can wrap. The parameter-free parts (positions, masked attention) are
two small registered layers.

It shares the teacher's tokenizer and ChatML prompt format (its input embedding covers every
token id), but its output head covers only the **answer vocabulary**: the tokens that occur in
some label's answer (`answer_vocabulary`). Why: with SmolLM2's 49,152-token head at every
position, 88% of a 6 x 192 student's parameters and ~80% of its compute were the head (measured
last session: ~75 ms per [1, 160] int8 forward, one per label); over ~100 answer tokens the head
is free. Label scores are then log P(label | prompt) under the student's distribution restricted
to answer tokens, and it is distilled from the teacher's distribution restricted the same way.

Inputs carry explicit positions and an attention mask, so one forward pass scores every label at
once with the teacher's tree layout (`models.scoring.constrained.tree_inputs`): token_ids (B, L) int32,
positions (B, L) int32, attention_mask (B, L, L) int32 (1 = may attend) -> logits (B, L, answer
vocabulary). Training uses plain causal inputs (`causal_inputs`).

Everything in the graph has an int8 TFLite builtin kernel (GATHER, FULLY_CONNECTED, BATCH_MATMUL,
SOFTMAX, REDUCE_MIN, SELECT_V2, MEAN/RSQRT for layer norm, GELU), so full-integer conversion
needs no Flex op. The attention mask is the one int8-specific choice, see `MaskedAttention`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf
import tf_keras

MASK_MARGIN = 16.0  # masked scores sit this far below the row's lowest score: weight <= e^-16 each
# Position codes at the token embeddings' scale (std 0.02): at sin/cos's own amplitude they drowned
# the tokens after the first layer norm, and distillation sat on a plateau for hundreds of steps
# (measured: answer loss 4.06 vs 5.65 after 200 steps on the real teacher).
POSITION_SCALE = 0.02
INPUT_NAMES = ("token_ids", "positions", "attention_mask")


@dataclass
class StudentConfig:
    """Shape of the student decoder."""

    vocabulary_size: int  # the teacher tokenizer's size (input token ids are shared)
    output_tokens: tuple[int, ...]  # the answer vocabulary: token ids the head predicts, in column order
    num_layers: int = 4  # transformer blocks
    hidden_dim: int = 128  # width of the residual stream
    num_heads: int = 4  # attention heads; hidden_dim must divide by it
    mlp_dim: int = 512  # width of each block's MLP
    max_length: int = 256  # longest input (prompt + answer, or prompt + label tree) the position table covers
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        self.output_tokens = tuple(int(t) for t in self.output_tokens)
        sizes = {"vocabulary_size": self.vocabulary_size, "num_layers": self.num_layers,
                 "hidden_dim": self.hidden_dim, "num_heads": self.num_heads, "mlp_dim": self.mlp_dim,
                 "max_length": self.max_length}
        bad = {k: v for k, v in sizes.items() if not isinstance(v, (int, np.integer)) or v < 1}
        if bad:
            raise ValueError(f"student sizes must be positive integers, got {bad}")
        if self.hidden_dim % self.num_heads or (self.hidden_dim // self.num_heads) % 2:
            raise ValueError(f"hidden_dim {self.hidden_dim} must split into {self.num_heads} heads of an even size")
        if len(self.output_tokens) < 2 or len(set(self.output_tokens)) != len(self.output_tokens):
            raise ValueError("output_tokens (the answer vocabulary) must list at least two distinct token ids")

    def check_fits(self, vocabulary_size: int, sequence_length: int | None = None) -> None:
        """Raise ValueError unless every token id of the tokenizer and every input length fit this student."""
        if self.vocabulary_size < vocabulary_size:
            raise ValueError(f"the student's vocabulary_size {self.vocabulary_size} is smaller than the tokenizer's "
                             f"{vocabulary_size} tokens; it must cover every token id the teacher uses")
        outside = [t for t in self.output_tokens if not 0 <= t < vocabulary_size]
        if outside:
            raise ValueError(f"answer-vocabulary token ids {outside[:5]} are outside the tokenizer's "
                             f"0..{vocabulary_size - 1}; the student must share the teacher's tokenizer")
        if sequence_length is not None and sequence_length > self.max_length:
            raise ValueError(f"inputs of {sequence_length} tokens do not fit the student's max_length "
                             f"{self.max_length}; raise max_length or shorten the prompts")

    def parameter_count(self) -> int:
        """Weights of `build_student(self)`, counted from the shapes (equals `model.count_params()`)."""
        d, m, v, a = self.hidden_dim, self.mlp_dim, self.vocabulary_size, len(self.output_tokens)
        block = 2 * 2 * d + 4 * (d * d + d) + (d * m + m) + (m * d + d)  # 2 norms, q/k/v/o, MLP in/out
        return v * d + self.num_layers * block + 2 * d + (d * a + a)  # embedding, blocks, final norm, head

    def to_dict(self) -> dict:
        return {**asdict(self), "output_tokens": list(self.output_tokens)}


def answer_vocabulary(tries, end_tokens=()) -> tuple[int, ...]:
    """Sorted token ids of every label answer of every task (`LabelTrie.sequences`), plus `end_tokens`."""
    return tuple(sorted({int(t) for trie in tries for sequence in trie.sequences for t in sequence}
                        | {int(t) for t in end_tokens}))


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
    """x + fixed sinusoidal position codes of the given positions (a tree token sits at prompt + depth)."""

    def __init__(self, max_length: int, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length

    def build(self, input_shape):
        self.table = tf.constant(POSITION_SCALE * sinusoid_table(self.max_length, int(input_shape[0][-1])))
        super().build(input_shape)

    def call(self, inputs):
        x, positions = inputs  # (batch, seq, hidden), (batch, seq)
        return x + tf.gather(self.table, positions)

    def get_config(self):
        return {**super().get_config(), "max_length": self.max_length}


@tf_keras.utils.register_keras_serializable(package="fintune")
class MaskedAttention(tf_keras.layers.Layer):
    """Multi-head scaled dot-product attention of already projected (query, key, value) under a mask.

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
        query, key, value, mask = inputs  # each (batch, seq, hidden); mask (batch, seq, seq)
        length, hidden = tf.shape(query)[1], query.shape[-1]
        q, k, v = (self._heads(x, length) for x in (query, key, value))
        q = q * (1.0 / math.sqrt(hidden // self.num_heads))
        scores = tf.matmul(q, k, transpose_b=True)  # (batch, heads, seq, seq)
        floor = tf.reduce_min(scores, axis=-1, keepdims=True) - MASK_MARGIN
        allowed = tf.cast(tf.expand_dims(mask, 1), tf.bool)  # EXPAND_DIMS: `[:, None]` is a Flex op at dynamic length
        weights = tf.nn.softmax(tf.where(allowed, scores, floor), axis=-1)
        context = tf.matmul(weights, v)  # (batch, heads, seq, head_dim)
        return tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [-1, length, hidden])

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}


def build_student(config: StudentConfig, seed: int = 0, teacher_embeddings: np.ndarray | None = None
                  ) -> tf_keras.Model:
    """A pre-norm GPT-style decoder: (token_ids, positions, attention_mask) -> answer-vocabulary logits.

    `teacher_embeddings` (vocabulary, teacher hidden) start the token embedding and the head from
    the teacher's own token embeddings (`projected_embeddings`) instead of random numbers.
    """
    tf_keras.utils.set_random_seed(seed)
    dense = tf_keras.layers.Dense
    seeds = itertools.count(seed * 10_000)

    def init(stddev=0.02):  # GPT-2's initialisation; one seeded initializer per layer (a shared one repeats)
        return tf_keras.initializers.RandomNormal(stddev=stddev, seed=next(seeds))

    token_ids = tf_keras.Input(shape=(None,), dtype="int32", name="token_ids")
    positions = tf_keras.Input(shape=(None,), dtype="int32", name="positions")
    mask = tf_keras.Input(shape=(None, None), dtype="int32", name="attention_mask")
    embedding = tf_keras.layers.Embedding(config.vocabulary_size, config.hidden_dim, embeddings_initializer=init(),
                                          name="token_embedding")
    x = AddPositions(config.max_length, name="positions_code")([embedding(token_ids), positions])
    for i in range(config.num_layers):
        h = tf_keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, name=f"block{i}_attention_norm")(x)
        q, k, v = (dense(config.hidden_dim, kernel_initializer=init(), name=f"block{i}_{n}")(h)
                   for n in ("query", "key", "value"))
        h = MaskedAttention(config.num_heads, name=f"block{i}_attention")([q, k, v, mask])
        out_std = 0.02 / math.sqrt(2 * config.num_layers)  # GPT-2: smaller init where blocks write the residual
        x = tf_keras.layers.Add(name=f"block{i}_attention_residual")(
            [x, dense(config.hidden_dim, kernel_initializer=init(out_std), name=f"block{i}_attention_output")(h)])
        h = tf_keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, name=f"block{i}_mlp_norm")(x)
        h = dense(config.mlp_dim, activation="gelu", kernel_initializer=init(), name=f"block{i}_mlp_in")(h)
        x = tf_keras.layers.Add(name=f"block{i}_mlp_residual")(
            [x, dense(config.hidden_dim, kernel_initializer=init(out_std), name=f"block{i}_mlp_out")(h)])
    x = tf_keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, name="final_norm")(x)
    head = dense(len(config.output_tokens), kernel_initializer=init(), name="lm_head")
    model = tf_keras.Model([token_ids, positions, mask], head(x), name="student")
    if teacher_embeddings is not None:
        table = projected_embeddings(teacher_embeddings, config.hidden_dim)
        if table.shape[0] < config.vocabulary_size:
            raise ValueError(f"the teacher has {table.shape[0]} token embeddings; the student needs "
                             f"{config.vocabulary_size}")
        embedding.set_weights([table[:config.vocabulary_size]])
        head.set_weights([table[list(config.output_tokens)].T.copy(), np.zeros(len(config.output_tokens), np.float32)])
    return model


def projected_embeddings(embeddings: np.ndarray, dim: int) -> np.ndarray:
    """The teacher's (vocabulary, hidden) token embeddings on their top `dim` principal axes, at std 0.02.

    Why: a student trained from random embeddings on a few thousand answers has seen most of the
    49k tokens never; the teacher's embedding geometry (which words are alike) comes for free.
    """
    table = np.asarray(embeddings, np.float32)
    centred = table - table.mean(axis=0, keepdims=True)
    _, _, axes = np.linalg.svd(centred[::max(len(centred) // 8192, 1)], full_matrices=False)  # axes from a sample
    projected = centred @ axes[:dim].T
    return (projected * (0.02 / projected.std())).astype(np.float32)


def causal_inputs(token_ids, padding_mask) -> dict:
    """Training/plain inputs for right-padded rows: positions 0..L-1, causal mask without padded keys."""
    token_ids = tf.convert_to_tensor(token_ids, tf.int32)
    length = tf.shape(token_ids)[1]
    positions = tf.broadcast_to(tf.range(length)[None, :], tf.shape(token_ids))
    causal = tf.linalg.band_part(tf.ones([length, length], tf.int32), -1, 0)
    keys = tf.convert_to_tensor(padding_mask, tf.int32)[:, None, :]
    return {"token_ids": token_ids, "positions": positions, "attention_mask": causal[None, :, :] * keys}


def tree_student_inputs(prompts: list[list[int]], trie, prompt_length: int | None = None,
                        num_nodes: int | None = None) -> dict:
    """`models.scoring.constrained.tree_inputs` for the student: positions per row, counted from each prompt's
    first real token (absolute position codes, unlike rotary ones, change under left padding).
    `prompt_length`/`num_nodes` pad to a fixed shape (padding nodes attend only to themselves)."""
    from models.scoring.constrained import tree_inputs

    tree = tree_inputs(prompts, trie, prompt_length, num_nodes)
    length = tree["token_ids"].shape[1] - (num_nodes or trie.num_nodes)
    pads = np.array([length - len(p) for p in prompts], np.int32)[:, None]
    positions = np.maximum(tree["positions"][None, :] - pads, 0).astype(np.int32)
    return {"token_ids": tree["token_ids"], "positions": positions,
            "attention_mask": tree["attention_mask"].astype(np.int32), "edge_positions": tree["edge_positions"]}


class StudentScorer:
    """Label predictions of a student, Keras model or `(inputs dict) -> logits` function (a TFLite file's,
    batch 1), one tree pass per batch of prompts sized to the batch itself."""

    def __init__(self, student, output_tokens, max_length: int | None = None):
        if isinstance(student, tf_keras.Model):
            forward = tf.function(lambda *x: student(list(x), training=False), input_signature=[  # one trace
                tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32),
                tf.TensorSpec([None, None, None], tf.int32)])
            self.logits = lambda inputs: forward(*(inputs[n] for n in INPUT_NAMES)).numpy()
            self.batch_size, self.max_length = 16, max_length or student_max_length(student)
        else:
            self.logits, self.batch_size, self.max_length = student, 1, max_length
        self.column = {token: column for column, token in enumerate(output_tokens)}

    def edge_log_probs(self, prompts, trie) -> np.ndarray:
        """(batch, edges) log P(edge token | its prefix) over the answer vocabulary."""
        longest = max(len(p) for p in prompts) + trie.num_nodes
        if self.max_length and longest > self.max_length:
            raise ValueError(f"a {longest - trie.num_nodes}-token prompt with a {trie.num_nodes}-node label tree "
                             f"does not fit the student's {self.max_length} positions")
        from models.scoring.constrained import log_normaliser

        inputs = tree_student_inputs(prompts, trie)
        logits = self.logits(inputs)[:, inputs["edge_positions"], :].astype(np.float64)  # (batch, edges, answer)
        columns = [self.column[int(t)] for t in trie.edge_tokens]
        return logits[:, np.arange(len(columns)), columns] - log_normaliser(logits)

    def classify(self, prompts, trie) -> list:
        """A Prediction per prompt (batches of similar length for a Keras student)."""
        from models.scoring.constrained import classify_in_batches

        return classify_in_batches(prompts, trie, lambda chunk: self.edge_log_probs(chunk, trie), self.batch_size)


def student_max_length(student) -> int | None:
    """The longest input a (possibly TF-MOT-wrapped) student's position table covers."""
    lengths = [getattr(getattr(layer, "layer", layer), "max_length", None) for layer in student.layers]
    return next((n for n in lengths if n), None)

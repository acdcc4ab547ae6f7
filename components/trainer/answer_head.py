"""A training view of the causal LM that applies the vocabulary head to answer positions only.

The loss is on answer tokens only, so computing logits for every prompt position is wasted work:
with SmolLM2's 49,152-token vocabulary the head is about a fifth of a training step's FLOPs and
its (batch, seq, vocab) logits dominate activation memory. This model returns hidden states and
gathers the answer positions inside `compute_loss` before the (tied) head. It shares the backbone,
so the LoRA weights it trains are the ones the CausalLM uses for decoding and export.
"""

from __future__ import annotations

import keras
import tensorflow as tf


class AnswerHeadTrainer(keras.Model):
    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, inputs, training=False):
        return self.backbone(inputs, training=training)  # (batch, seq, hidden)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return tf.reduce_mean(answer_nll(self.backbone, y_pred, y, sample_weight))


def answer_nll(backbone, hidden_states, targets, weight):
    """Negative log-likelihood of every answer token: (answers,), float32."""
    answer = weight > 0  # (batch, seq)
    hidden = tf.boolean_mask(hidden_states, answer)  # (answers, hidden)
    answer_targets = tf.boolean_mask(targets, answer)  # (answers,)
    logits = backbone.token_embedding(hidden, reverse=True)  # (answers, vocab)
    return keras.losses.sparse_categorical_crossentropy(answer_targets, tf.cast(logits, "float32"), from_logits=True)

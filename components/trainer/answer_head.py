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

from models.llm.tfrecords import answer_nll


class AnswerHeadTrainer(keras.Model):
    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, inputs, training=False):
        return self.backbone(inputs, training=training)  # (batch, seq, hidden)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return tf.reduce_mean(answer_nll(self.backbone, y_pred, y, sample_weight))

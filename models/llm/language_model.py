"""The causal language model: build, LoRA, merge, save and load.

The model is keras-hub's `Llama3CausalLM` without a preprocessor (tokenisation happens outside
the graph with `models.llm.tokenizer.ChatTokenizer`, and a CausalLM that holds a preprocessor drags
hash-table ops into exported graphs).

Saving is config JSON + `model.weights.h5` rather than a `.keras` file: keras-hub's Llama
backbone drops `tie_word_embeddings` from its config, so a `.keras` file of a tied model does not
load back. We keep the full constructor arguments ourselves and rebuild from them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

from models.llm.tokenizer import ChatTokenizer  # noqa: E402
from schemas.artifacts import ModelFiles  # noqa: E402

# Every projection of attention and MLP: the recipe DESIGN.md measured (72% vs 24% for q/v only).
ALL_PROJECTIONS = ("query", "key", "value", "attention_output", "feedforward_intermediate_dense",
                   "feedforward_gate_dense", "feedforward_output_dense")

TINY_ARCHITECTURE = {
    "num_layers": 2, "num_query_heads": 4, "num_key_value_heads": 2, "hidden_dim": 64,
    "intermediate_dim": 128, "rope_max_wavelength": 10000, "layer_norm_epsilon": 1e-5,
    "tie_word_embeddings": True,
}


class ModelLoadError(Exception):
    """A saved model folder that cannot be used: missing files, wrong shapes, other model."""


def build_causal_lm(architecture: dict, vocabulary_size: int, seed: int = 0) -> keras_hub.models.Llama3CausalLM:
    """A randomly initialised Llama-style causal LM with the given architecture."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.Llama3Backbone(vocabulary_size=vocabulary_size, **architecture)
    return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=None)


def architecture_of(causal_lm) -> dict:
    backbone = causal_lm.backbone
    config = backbone.get_config()
    keys = ("num_layers", "num_query_heads", "num_key_value_heads", "hidden_dim", "intermediate_dim",
            "rope_max_wavelength", "layer_norm_epsilon")
    architecture = {k: config[k] for k in keys}
    architecture["tie_word_embeddings"] = bool(backbone.token_embedding.tie_weights)
    return architecture


def enable_lora(causal_lm, rank: int, alpha: float, targets: tuple[str, ...] = ALL_PROJECTIONS) -> int:
    """Freeze the backbone and add LoRA adapters to the named projections; returns how many.

    keras-hub's `Backbone.enable_lora` does not pass `lora_alpha`, so the scaling would be fixed
    at alpha = rank; we walk the layers ourselves to set it.
    """
    backbone = causal_lm.backbone
    backbone.trainable = True
    for layer in backbone._flatten_layers(include_self=False):
        layer.trainable = False
    enabled = 0
    for layer in backbone._flatten_layers(include_self=False):
        if layer.name in targets and hasattr(layer, "enable_lora") and layer.weights:
            layer.trainable = True
            layer.enable_lora(rank, lora_alpha=alpha)
            enabled += 1
    if enabled == 0:
        raise ValueError(f"no layer matches the LoRA targets {targets}")
    return enabled


def merge_lora(causal_lm):
    """A new model whose kernels hold W + (alpha/rank)·A·B: same logits, no adapters."""
    merged = build_causal_lm(architecture_of(causal_lm), causal_lm.backbone.vocabulary_size)
    values = {}
    for layer in causal_lm.backbone._flatten_layers(include_self=False):
        if getattr(layer, "lora_enabled", False):
            values[layer._kernel.path] = keras.ops.convert_to_numpy(layer.kernel)
    for variable in causal_lm.weights:
        if "lora_kernel" not in variable.path:
            values.setdefault(variable.path, keras.ops.convert_to_numpy(variable))
    targets = {v.path: v for v in merged.weights}
    if set(targets) != set(values):
        raise RuntimeError(f"LoRA merge: variable mismatch {sorted(set(targets) ^ set(values))[:5]}")
    for path, variable in targets.items():
        variable.assign(values[path])
    return merged


def save_model(causal_lm, tokenizer: ChatTokenizer, directory: Path, extra: dict | None = None) -> None:
    """Save a (LoRA-merged) model: architecture JSON, weights and tokenizer."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if any(getattr(layer, "lora_enabled", False) for layer in causal_lm.backbone._flatten_layers()):
        causal_lm = merge_lora(causal_lm)
    config = {"architecture": architecture_of(causal_lm),
              "vocabulary_size": causal_lm.backbone.vocabulary_size, **(extra or {})}
    files = ModelFiles(directory)
    files.config_file.write_text(json.dumps(config, indent=2))
    causal_lm.save_weights(str(files.weights_file))
    tokenizer.save(directory)


def load_model(directory: Path) -> tuple[keras_hub.models.Llama3CausalLM, ChatTokenizer, dict]:
    """(model, tokenizer, config) from a folder written by `save_model`."""
    directory = Path(directory)
    try:
        config = ModelFiles(directory).config()
        tokenizer = ChatTokenizer.load(directory)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{directory} is not a saved fintune model ({error})") from None
    if tokenizer.vocabulary_size > config["vocabulary_size"]:
        raise ModelLoadError(
            f"{directory}: the tokenizer has {tokenizer.vocabulary_size} tokens but the model only "
            f"{config['vocabulary_size']} embeddings")
    causal_lm = build_causal_lm(config["architecture"], config["vocabulary_size"])
    try:
        causal_lm.load_weights(str(ModelFiles(directory).weights_file))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{directory}: weights do not fit the model ({error})") from None
    return causal_lm, tokenizer, config


def count_parameters(causal_lm) -> int:
    return int(sum(np.prod(v.shape) for v in causal_lm.weights))

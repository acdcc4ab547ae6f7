"""The student's plan: every setting and the data checked before the teacher runs or anything trains.

The student must fit the tokenizer and the longest request, the sparsity schedule must be reachable
and the calibration samples must have the converter's input shape; a setting that cannot work is a
ValueError here, not an error half an hour into distillation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.student.settings import StudentSettings
from schemas.artifacts import DatasetsFiles


@dataclass
class StudentPlan:
    """Everything `plan_student` checked, ready for training."""

    config: object  # models.student.model.StudentConfig
    max_prompt_tokens: int  # Transform's prompt budget: the longest prompt a request can have
    num_nodes: int  # the largest task's label tree
    data_max_length: int  # Transform's max_length: the longest training input
    pad_id: int
    tries: dict  # {task: LabelTrie}
    eval_rows: pd.DataFrame  # test rows: task, target, prompt_ids
    selection_rows: pd.DataFrame  # validation rows for the candidates' macro-F1 (may be empty)
    calibration: list  # dicts of the TFLite file's three int32 inputs
    paths: dict  # split -> tfrecord path


def _label_rows(frame: pd.DataFrame, per_task: int, seed: int, tasks) -> pd.DataFrame:
    """Up to `per_task` label rows of each of `tasks` (0 = all), prompt ids as lists of ints."""
    from components.common.metrics import sample_label_rows

    rows = sample_label_rows(frame, per_task, seed)
    rows = rows[rows["task"].isin(tasks)].reset_index(drop=True)
    return rows.assign(prompt_ids=rows["prompt_ids"].map(lambda ids: [int(i) for i in ids]))


def plan_student(causal_lm, tokenizer, datasets_dir: Path, labels: dict, settings: StudentSettings) -> StudentPlan:
    """Check the student, the schedule and the calibration data against the data set; nothing trains."""
    from models.scoring.constrained import LabelTrie
    from models.student.compression import (
        calibration_samples,
        check_calibration_samples,
        check_pruning_schedule,
        default_end_step,
    )
    from models.student.model import StudentConfig, answer_vocabulary

    datasets = DatasetsFiles(datasets_dir)
    paths = {split: datasets.tfrecord(split) for split in ("train", "validation", "test")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ValueError(f"the student stage needs Transform's TFRecord splits; missing {missing}")
    transform = datasets.transform()
    columns = ["id", "task", "target", "prompt_ids"]
    splits = {split: pd.read_parquet(datasets.split_table(split), columns=columns) for split in paths}
    tasks = [task for task in labels if labels[task]]
    if not tasks:
        raise ValueError("the data set has no label tasks: the student scores labels")
    tries = {task: LabelTrie(labels[task], tokenizer) for task in tasks}
    max_prompt_tokens = int(transform["max_prompt_tokens"])
    num_nodes = max(trie.num_nodes for trie in tries.values())
    needed = max(int(transform["max_length"]), max_prompt_tokens + num_nodes)  # any request fits
    vocabulary = max(int(causal_lm.backbone.vocabulary_size), tokenizer.vocabulary_size)
    config = StudentConfig(vocabulary_size=vocabulary, output_tokens=answer_vocabulary(tries.values()),
                           num_layers=settings.num_layers, hidden_dim=settings.hidden_dim,
                           num_heads=settings.num_heads, mlp_dim=settings.mlp_dim,
                           max_length=settings.max_length or needed)
    config.check_fits(tokenizer.vocabulary_size, needed)
    check_pruning_schedule(settings.target_sparsity, settings.pruning_steps, 0,
                           default_end_step(settings.pruning_steps, 0, settings.pruning_frequency),
                           settings.pruning_frequency)
    eval_rows = _label_rows(splits["test"], settings.eval_examples, settings.seed, tasks)
    if eval_rows.empty:
        raise ValueError(f"the test split has no rows of the label tasks {tasks} to evaluate the student on")
    selection_rows = (_label_rows(splits["validation"], settings.selection_examples, settings.seed, tasks)
                      if settings.selection_examples else splits["validation"].iloc[:0])  # 0 = select on loss only
    if settings.select_on == "macro_f1" and selection_rows.empty:
        raise ValueError("the validation split has no label-task rows to choose alpha and temperature on")
    # Calibration: real train prompts of every label task, shuffled, each with its task's label tree
    # (padded to one shape, see `calibration_samples`). 128: the int8 ranges are min/max over 128 x L
    # token positions (>20k values per activation tensor), which TF's guide ("~100-500 samples") finds
    # stable; QAT has already learned the Dense ranges, and conversion time grows linearly with the
    # count. Measured on a random-weight student: top-1 agreement with float saturates at ~4 samples.
    train = splits["train"][splits["train"]["task"].isin(tasks)].sample(frac=1.0, random_state=settings.seed)
    calibration = check_calibration_samples(
        calibration_samples(((ids, tries[task]) for ids, task in zip(train["prompt_ids"], train["task"])),
                            settings.calibration_examples),
        config.vocabulary_size, config.max_length)
    return StudentPlan(config, max_prompt_tokens, num_nodes, int(transform["max_length"]), tokenizer.pad_id, tries,
                       eval_rows, selection_rows, calibration, paths)

"""Trainer: LoRA fine-tuning of the base model on Transform's tf.data loader, with optional tuning.

AdamW with linear warm-up and cosine decay, global-norm clipping, loss on answer tokens only.
Training runs in rounds of `validate_every` steps; after each round the validation loss and the
label accuracy/macro-F1 on a validation sample are logged to TensorBoard, the best weights are
kept, early stopping is checked, and a checkpoint is written atomically to the execution's work
folder, so a killed run resumes from the last round. The saved model has LoRA merged in.

`tune_trials > 1` runs a seeded random search over learning rate, LoRA rank and steps and keeps
the trial with the best validation macro-F1 (hparams plugin in TensorBoard compares them).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import dataclass

import numpy as np

from components.base import Component, ExecutionContext, UsageError, params_to_dict
from components.config import param
from components.trainer.cluster import DISTRIBUTIONS
from schemas.artifacts import ModelFiles

EARLY_STOPPING_METRICS = ("val_macro_f1", "val_loss")
SEARCH_SPACE = {"learning_rate": [3e-4, 1e-3, 2e-3], "lora_rank": [8, 16, 32], "steps_scale": [1.0, 1.5]}


@dataclass
class TrainerParams:
    """How the model is fine-tuned."""

    steps: int = param(200, "optimizer steps in total (rounded up to whole validation rounds)")
    epochs: float = param(0.0, "when > 0: steps sized from the data, epochs x ceil(train rows / batch_size), "
                               "instead of `steps` (which is then ignored; rounded up to whole validation rounds)")
    batch_size: int = param(16, "examples per step")
    learning_rate: float = param(1e-3, "peak learning rate (after warm-up)")
    warmup_fraction: float = param(0.1, "share of steps with linear warm-up")
    weight_decay: float = param(0.0, "AdamW weight decay on the LoRA weights")
    clip_norm: float = param(1.0, "global gradient-norm clip")
    lora_rank: int = param(16, "LoRA rank")
    lora_alpha: float = param(32.0, "LoRA alpha (scale = alpha / rank)")
    lora_targets: list[str] = param(["query", "key", "value", "attention_output", "feedforward_intermediate_dense",
                                     "feedforward_gate_dense", "feedforward_output_dense"],
                                    "layer names that get LoRA adapters")
    validate_every: int = param(50, "steps between validations and checkpoints")
    validation_label_examples: int = param(64, "validation examples decoded for label accuracy each round")
    early_stopping_metric: str = param("val_macro_f1", "metric that picks the best round: val_macro_f1 | val_loss")
    early_stopping_patience: int = param(3, "validations without improvement before stopping (0 = never)")
    max_validation_batches: int = param(20, "validation batches per validation loss")
    jit_compile: bool = param(False, "compile the train step with XLA")
    precision: str = param("float32", "float32 | mixed_bfloat16 (bfloat16 compute, float32 weights)")
    tune_trials: int = param(1, "random-search trials over learning rate, LoRA rank and steps (1 = no search)")
    seed: int = param(0, "seed of shuffling, LoRA initialisation and the search")
    distribution: str = param("none", "none | mirrored (local GPUs) | multi_worker (hosts in TF_CONFIG); "
                                      "batch_size stays the global batch")

    def __post_init__(self):
        for name in ("steps", "batch_size", "lora_rank", "validate_every", "max_validation_batches", "tune_trials"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0 (0 = use steps), got {self.epochs}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.precision not in ("float32", "mixed_bfloat16"):
            raise ValueError(f"precision must be float32 or mixed_bfloat16, got {self.precision!r}")
        if self.early_stopping_metric not in EARLY_STOPPING_METRICS:
            raise ValueError(f"early_stopping_metric must be one of {EARLY_STOPPING_METRICS}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {' | '.join(DISTRIBUTIONS)}, got {self.distribution!r}")
        if self.distribution != "none" and self.tune_trials > 1:
            raise ValueError("tune_trials > 1 runs on one process; use distribution=none for a search")

    @property
    def total_steps(self) -> int:
        return math.ceil(self.steps / self.validate_every) * self.validate_every


def sized_from_data(p: TrainerParams, train_rows: int) -> TrainerParams:
    """`p` with `steps` = epochs x steps per epoch when `epochs` is set (the chief and every worker size it
    alike, from the Transform's train split), else `p` as it is."""
    if not p.epochs:
        return p
    return dataclasses.replace(p, steps=max(1, round(p.epochs * math.ceil(train_rows / p.batch_size))))


def train_rows(datasets) -> int:
    """Rows of the train split, from the Transform's Datasets artifact."""
    return int(datasets.metrics["rows_per_split"]["train"])


def search_trials(p: TrainerParams) -> list[TrainerParams]:
    """The trials of a seeded random search (trial 0 is the configured setting itself)."""
    if p.tune_trials == 1:
        return [p]
    rng = np.random.default_rng(p.seed)
    grid = [(lr, rank, scale) for lr in SEARCH_SPACE["learning_rate"] for rank in SEARCH_SPACE["lora_rank"]
            for scale in SEARCH_SPACE["steps_scale"]]
    picks = rng.choice(len(grid), size=min(p.tune_trials - 1, len(grid)), replace=False)
    trials = [p]
    for index in picks:
        lr, rank, scale = grid[int(index)]
        trials.append(dataclasses.replace(p, learning_rate=lr, lora_rank=rank, lora_alpha=2.0 * rank,
                                          steps=max(1, int(p.steps * scale)), tune_trials=1))
    return trials


class Trainer(Component):
    name = "trainer"
    version = "4"
    description = "LoRA fine-tuning: warm-up + cosine AdamW, validation, early stopping, checkpoints, tuning."
    inputs = {"datasets": "Datasets", "base_model": "BaseModel"}
    outputs = {"model": "Model"}
    Params = TrainerParams

    def fingerprint_parameters(self, params: TrainerParams) -> dict:
        # distribution=none is left out, so default runs keep the fingerprints they had before the field existed.
        values = params_to_dict(params)
        if values.get("distribution") == "none":
            del values["distribution"]
        return values

    def execute(self, ctx: ExecutionContext):
        from components.trainer.loop import train_trial
        from models.llm.language_model import save_model

        p: TrainerParams = sized_from_data(ctx.params, train_rows(ctx.input("datasets")))
        if p.epochs:
            ctx.log(f"  {p.epochs:g} epoch(s) of {train_rows(ctx.input('datasets'))} train rows: {p.steps} steps "
                    f"({p.total_steps} in whole validation rounds of {p.validate_every})")
        datasets, base = ctx.input("datasets").uri, ctx.input("base_model").uri
        train = train_trial
        if p.distribution != "none":
            from components.trainer.distributed import is_chief, train_trial_distributed

            if not is_chief(p.distribution):
                raise UsageError("TF_CONFIG makes this process a non-chief worker; start it with `pipeline.py worker`")
            train = lambda ctx, trial, *folders: train_trial_distributed(ctx.log, trial, *folders, chief=True)  # noqa: E731
        trials = search_trials(p)
        summaries, best_index = [], None
        for index, trial in enumerate(trials):
            name = f"trial-{index}" if len(trials) > 1 else "train"
            if len(trials) > 1:
                ctx.log(f"  trial {index + 1}/{len(trials)}: lr {trial.learning_rate:g}, rank {trial.lora_rank}, "
                        f"steps {trial.total_steps}")
            trial_dir = ctx.work_dir / name
            trial_dir.mkdir(exist_ok=True)
            done = trial_dir / "model"
            if not ModelFiles(done).summary_file.exists():  # a finished trial survives a crash of a later one
                result = train(ctx, trial, datasets, base, ctx.tensorboard_dir / name, trial_dir)
                extra = {k: v for k, v in result.base_config.items() if k not in ("architecture", "vocabulary_size")}
                tmp = trial_dir / "model.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                save_model(result.causal_lm, result.tokenizer, tmp, extra=extra)
                ModelFiles(tmp).training_history_file.write_text(json.dumps(result.history, indent=2))
                summary = {"trial": name, "params": dataclasses.asdict(trial), "best": result.best}
                ModelFiles(tmp).summary_file.write_text(json.dumps(summary, indent=2))
                tmp.rename(done)
            summaries.append(json.loads(ModelFiles(done).summary_file.read_text()))
            score = summaries[-1]["best"].get("val_macro_f1", -math.inf)
            if best_index is None or score > summaries[best_index]["best"].get("val_macro_f1", -math.inf):
                best_index = index
        out = ctx.output_dir("model")
        chosen = ctx.work_dir / summaries[best_index]["trial"] / "model"
        for item in chosen.iterdir():
            shutil.copy2(item, out / item.name)
        ModelFiles(out).trials_file.write_text(json.dumps(summaries, indent=2))
        best = summaries[best_index]["best"]
        if len(trials) > 1:
            ctx.log(f"  best trial: {summaries[best_index]['trial']} (val macro-F1 {best.get('val_macro_f1'):.3f})")
        return {"model": {"best_step": best.get("step", 0), "val_loss": best.get("val_loss"),
                          "val_accuracy": best.get("val_accuracy"), "val_macro_f1": best.get("val_macro_f1"),
                          "trainable_parameters": best.get("trainable_parameters"),
                          "useful_tokens_per_s": best.get("useful_tokens_per_s"), "trials": len(trials)}}

"""The student component's settings: its size and its distillation, pruning, QAT and evaluation budgets."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from components.config import param

SELECT_ON = ("macro_f1", "answer_loss")


@dataclass
class StudentSettings:
    """The student's size and its distillation, pruning, QAT and evaluation budgets."""

    enabled: bool = param(True, "distil, prune, QAT and convert the on-device student (false: the component "
                                "records that it was skipped, and no student is bundled or benchmarked)")
    num_layers: int = param(6, "student transformer blocks (the measured size: 6 x 192, MLP 768, 12.1M "
                               "parameters, 9.4M of them SmolLM2's 49,152-token input embedding)")
    hidden_dim: int = param(192, "width of the student's residual stream")
    num_heads: int = param(6, "attention heads; hidden_dim must split into heads of an even size")
    mlp_dim: int = param(768, "width of each block's MLP")
    max_length: int = param(0, "longest input the student covers (0 = the data's: Transform's max_length or "
                               "max_prompt_tokens + the largest label tree, whichever is longer)")
    steps: int = param(1000, "distillation steps per (alpha, temperature) candidate")
    batch_size: int = param(16, "sequences per distillation / pruning / QAT step")
    learning_rate: float = param(5e-4, "Adam learning rate of distillation (measured: 5e-4 reached validation "
                                       "macro-F1 0.44 in 400 steps where 1e-3 reached 0.25 and 2e-3 0.05)")
    alphas: list[float] = param([0.5, 0.9], "candidate soft-target shares of the loss (1 = teacher only)")
    temperatures: list[float] = param([2.0], "candidate softmax temperatures of the soft targets")
    select_on: str = param("macro_f1", "validation figure that picks the candidate: macro_f1 (ties broken by "
                                       "answer_loss) or answer_loss")
    teacher_batches: int = param(0, "train batches of label rows the teacher labels once (0 = the whole split); "
                                    "every stage cycles through them")
    teacher_precision: str = param("mixed_bfloat16", "teacher's compute precision for the soft targets: "
                                                     "mixed_bfloat16 (1.6x faster here) or float32")
    teacher_init: bool = param(True, "start the student's token embedding and head from the teacher's token "
                                     "embeddings (principal axes) instead of random numbers")
    target_sparsity: float = param(0.5, "share of zero weights in every Dense kernel and the embedding after pruning")
    pruning_steps: int = param(200, "distillation steps with magnitude pruning (the schedule ends at 3/4 of them)")
    pruning_frequency: int = param(10, "steps between pruning mask updates")
    qat_steps: int = param(100, "quantisation-aware distillation steps after pruning")
    calibration_examples: int = param(128, "representative train requests for the int8 converter's ranges")
    eval_examples: int = param(0, "test examples per label task the student is measured on: in the pipeline the "
                                   "first of the Evaluator's scored rows, as for the Optimizer's variants (0 = all); "
                                   "run alone, a sample of the test split")
    selection_examples: int = param(10, "validation examples per label task for the candidates' macro-F1 (0 = "
                                        "select on answer loss only)")
    validation_batches: int = param(20, "validation batches for the candidates' answer loss (0 = all)")
    latency_runs: int = param(5, "timed repeats of each single request (median reported)")
    num_threads: int = param(2, "LiteRT interpreter threads (the Benchmark's default)")
    seed: int = param(0, "seed of the student's weights, the data order and the example samples")
    max_macro_f1_drop: float = param(5.0, "compression gate for the student: at most this many macro-F1 points below "
                                          "the fine-tuned Keras model's on the same rows")

    def __post_init__(self):
        counts = {name: getattr(self, name) for name in (
            "steps", "batch_size", "pruning_steps", "pruning_frequency", "qat_steps", "calibration_examples",
            "latency_runs", "num_threads")}
        bad = {name: value for name, value in counts.items() if not value >= 1}
        if bad:
            raise ValueError(f"student settings must be at least 1: {bad}")
        if min(self.max_length, self.selection_examples, self.validation_batches, self.teacher_batches,
               self.eval_examples, self.max_macro_f1_drop) < 0:
            raise ValueError("max_length, selection_examples, validation_batches, teacher_batches, eval_examples and "
                             "max_macro_f1_drop must be >= 0")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.alphas or not all(0.0 <= a <= 1.0 for a in self.alphas):
            raise ValueError(f"alphas must be a non-empty list of values in [0, 1], got {self.alphas}")
        if not self.temperatures or not all(t > 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be a non-empty list of values > 0, got {self.temperatures}")
        if self.teacher_precision not in ("float32", "mixed_bfloat16"):
            raise ValueError(f"teacher_precision must be float32 or mixed_bfloat16, got {self.teacher_precision!r}")
        if self.select_on not in SELECT_ON:
            raise ValueError(f"select_on must be one of {SELECT_ON}, got {self.select_on!r}")
        if self.select_on == "macro_f1" and self.selection_examples == 0:
            raise ValueError("select_on=macro_f1 needs selection_examples >= 1")
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in [0, 1), got {self.target_sparsity}")
        # The student's shape and the pruning schedule are checked against the data in plan_student
        # (StudentConfig, check_pruning_schedule): that needs TensorFlow, which parameters do not import.

    def grid(self) -> list[tuple[float, float]]:
        return list(itertools.product(self.alphas, self.temperatures))

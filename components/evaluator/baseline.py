"""BaseEvaluator: the base model's side of the evaluation, once per data set.

What the base model scores depends on the test rows and the base model only, not on training, so
it is its own component: a run that changes only Trainer (or later) settings takes it from the
cache instead of re-scoring the base model (half of the Evaluator's time before; the recipe study
reruns the Evaluator for every recipe). It reads the `evaluator` section's parameters, so the two
always agree on the rows, and its fingerprint hashes only the ones that change what it computes.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pandas as pd

from components.base import Component, ExecutionContext
from components.common.laps import Laps
from components.evaluator.component import EvaluatorParams, evaluate_model, evaluation_rows
from schemas.artifacts import BaseEvaluationFiles, DatasetsFiles

# The blessing thresholds judge the fine-tuned model; they do not change the base model's scores.
BLESSING_FIELDS = ("min_macro_f1", "min_macro_f1_gain", "max_perplexity_ratio")


class BaseEvaluator(Component):
    name = "base_evaluator"
    version = "1"
    description = "The base model on the Evaluator's test rows: label scores, perplexity, invalid outputs."
    inputs = {"datasets": "Datasets", "base_model": "BaseModel"}
    outputs = {"base_evaluation": "BaseEvaluation"}
    Params = EvaluatorParams
    params_section = "evaluator"

    def fingerprint_parameters(self, params: EvaluatorParams) -> dict:
        return {key: value for key, value in asdict(params).items() if key not in BLESSING_FIELDS}

    def execute(self, ctx: ExecutionContext):
        p: EvaluatorParams = ctx.params
        datasets = DatasetsFiles(ctx.input("datasets"))
        rows = evaluation_rows(p, datasets)
        laps = Laps()
        results, predicted, unconstrained = evaluate_model(ctx, p, datasets, rows, ctx.input("base_model").uri,
                                                           "base", laps)
        files = BaseEvaluationFiles(ctx.output_dir("base_evaluation"))
        pd.DataFrame({"id": rows["id"], "label": [x.label for x in predicted],
                      "probability": [x.probability for x in predicted]}).to_json(
            files.predictions_file, orient="records", lines=True)
        files.results_file.write_text(json.dumps({"results": results, "unconstrained": unconstrained,
                                                  "seconds": laps.total()}, indent=2))
        return {"base_evaluation": {key: results[key] for key in ("accuracy", "macro_f1", "perplexity")}}

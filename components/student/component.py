"""Student: the fine-tuned model distilled into a small full-integer int8 TFLite classifier.

Its own component (not a step of the Optimizer): it needs only the fine-tuned model, the data sets
and the Evaluator's scored rows, so changing its settings never re-runs the teacher's PTQ export,
and the Exporter and Benchmark take its variant beside the Optimizer's. It is judged by the same
compression gate as the PTQ variants, with its own budget, on the same test rows.
"""

from __future__ import annotations

import json

import pandas as pd

from components.base import Component, ExecutionContext, PipelineError
from components.student.settings import StudentSettings
from schemas.artifacts import DatasetsFiles, EvaluationFiles, VariantsFiles

STUDENT_KIND = "student"


class Student(Component):
    name = "student"
    version = "1"
    description = "Distil, prune, QAT and convert the fine-tuned model into a full-integer int8 student."
    inputs = {"model": "Model", "datasets": "Datasets", "evaluation": "Evaluation"}
    outputs = {"student": "StudentModel"}
    Params = StudentSettings

    def execute(self, ctx: ExecutionContext):
        from components.common.compression_gate import compression_gate
        from components.common.variant_quality import evaluation_rows
        from components.student.stage import StudentExportError, distill_student
        from models.llm.language_model import load_model

        p: StudentSettings = ctx.params
        out = VariantsFiles(ctx.output_dir("student"))
        if not p.enabled:
            ctx.log("  skipped (student.enabled=false): no student is bundled or benchmarked")
            out.manifest_file.write_text(json.dumps({"enabled": False, "variants": []}, indent=2))
            return {"student": {"enabled": False}}
        datasets = DatasetsFiles(ctx.input("datasets"))
        causal_lm, tokenizer, _ = load_model(ctx.input("model").uri)
        test = pd.read_parquet(datasets.split_table("test"), columns=["id", "prompt_ids"])
        rows = evaluation_rows(EvaluationFiles(ctx.input("evaluation")).predictions_file, test, p.eval_examples)
        try:
            variant = distill_student(causal_lm, tokenizer, datasets.folder, datasets.labels(), out.folder, p, ctx.log,
                                      eval_rows=rows)
        except (ValueError, StudentExportError) as error:
            raise PipelineError(f"student: {error}") from None
        teacher = json.loads(out.file(variant["report"]).read_text())["teacher"]["quality"]
        (verdict,) = compression_gate([{**variant, "macro_f1": variant["quality"]["macro_f1"]}],
                                      teacher["macro_f1"], {STUDENT_KIND: p.max_macro_f1_drop})
        variant["gate"] = {k: verdict[k] for k in ("kind", "drop_points", "allowed_points", "eligible", "reason")}
        ctx.log(f"  gate {variant['name']}: {'eligible' if verdict['eligible'] else 'NOT eligible'} "
                f"({verdict['reason']})")
        out.manifest_file.write_text(json.dumps({"enabled": True, "keras_quality": teacher, "variants": [variant]},
                                                indent=2))
        return {"student": {"enabled": True, "size_bytes": variant["size_bytes"],
                            "accuracy": variant["quality"]["accuracy"], "macro_f1": variant["quality"]["macro_f1"],
                            "eligible": verdict["eligible"]}}

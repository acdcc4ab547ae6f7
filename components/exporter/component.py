"""Exporter: one self-describing bundle per variant, and a push of blessed models to serving.

A bundle holds the model (SavedModel folder or `.tflite` file), `tokenizer.json`, `labels.json`,
`model_card.md` and `manifest.json` with the SHA-256 of every file. Only a blessed model is pushed
to `<serving_dir>/<name>/<version>/` (TF Serving's numbered layout) unless `force_push` is set.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.base import Component, ExecutionContext
from components.config import param
from models.files import file_sha256, size_on_disk
from schemas.artifacts import PUSHED_EXTRAS, BundleFiles, BundlesFiles, EvaluationFiles, ModelFiles, VariantsFiles

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ExporterParams:
    """Where bundles are pushed."""

    model_name: str = param("fintune-classifier", "name of the pushed model")
    serving_dir: str = param(str(REPO_ROOT / "serving" / "models"), "TF Serving model base path")
    push: bool = param(True, "push the SavedModel bundle of a blessed model to serving_dir")
    force_push: bool = param(False, "push even when the Evaluator did not bless the model")

    def __post_init__(self):
        if not self.model_name or "/" in self.model_name:
            raise ValueError(f"model_name must be a plain name, got {self.model_name!r}")


def push_bundle(bundle: Path, base: Path) -> Path:
    """Copy a SavedModel bundle to the next free `<base>/<version>/`; the new version's folder.

    The copy is made in a temporary folder of this push's own (a concurrent push never deletes it)
    and renamed onto the next version number, which claims that number atomically: when another
    push took it first, the rename fails and the next number is tried. A server polling `base`
    never sees a half-copied version.
    """
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-push-", dir=base))
    try:
        shutil.copytree(BundleFiles(bundle).saved_model_dir, tmp, dirs_exist_ok=True)
        # TF Serving ignores assets.extra/: the tokenizer, labels, card and manifest travel there.
        extra_dir = tmp / PUSHED_EXTRAS
        extra_dir.mkdir(exist_ok=True)
        for extra in bundle.iterdir():
            if extra.is_file():
                shutil.copy2(extra, extra_dir / extra.name)
        version = max((int(d.name) for d in base.iterdir() if d.is_dir() and d.name.isdigit()), default=0) + 1
        while True:
            try:
                os.rename(tmp, base / str(version))  # fails when the folder exists (and holds files)
                return base / str(version)
            except OSError:
                if not (base / str(version)).exists():
                    raise
                version += 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(bundle: Path) -> dict:
    manifest_file = BundleFiles(bundle).manifest_file
    files = {str(f.relative_to(bundle)): {"sha256": file_sha256(f), "bytes": f.stat().st_size}
             for f in sorted(bundle.rglob("*")) if f.is_file() and f.name != manifest_file.name}
    manifest = {"files": files}
    manifest_file.write_text(json.dumps(manifest, indent=2))
    return manifest


def signatures_section(variant: dict, shapes: dict) -> str:
    """The model card's description of the file's inputs and outputs."""
    if variant.get("kind") == "student":
        student = shapes["student"]
        return f"""## Inputs (full-integer int8 student, int32 inputs, batch 1, length L free; see `shapes.json`)

A prompt (at most {student['max_prompt_tokens']} tokens) followed by its task's flattened label tree (at most
{student['nodes']} nodes), L <= {student['max_length']}: token_ids, positions [1, L] and attention_mask
[1, L, L] -> int8 logits [1, L, {len(student['output_tokens'])}] over the answer vocabulary (`output_tokens`
in `shapes.json`: the tokens of every label answer). fintune's `models.student.model.StudentScorer` builds the
inputs and turns them into label probabilities. It classifies only; free-text replies need the fine-tuned
model. Distillation, pruning and QAT figures: `student.json`.
"""
    return f"""## Signatures (int32 inputs, fixed shapes, batch 1 except `decode_batch`; see `shapes.json`)

- `serve`: token_ids, padding_mask [1, {shapes['sequence_length']}] -> logits [1, {shapes['sequence_length']}, vocab]
- `score_labels`: a left-padded prompt ({shapes['tree']['prompt_tokens']} tokens) followed by the flattened label
  tree ({shapes['tree']['nodes']} nodes): token_ids [1, L], positions [L], attention_mask [1, L, L],
  edge_positions and edge_tokens [{shapes['tree']['edges']}] -> log-probability of every tree edge
  (L = {shapes['tree']['prompt_tokens'] + shapes['tree']['nodes']}); fintune's `models.export.exported.ExportedModel`
  builds the inputs and turns the edges into label probabilities.
- `prefill`: token_ids [1, {shapes['cache']['prompt_tokens']}] right-padded, last_index [1] -> logits, and
  new_keys / new_values [layers, kv heads, {shapes['cache']['prompt_tokens']}, head dim] of every prompt position
- `decode`: token_id [1, 1], index [1], and per layer i key_cache_i [kv heads, {shapes['cache']['positions']}, head dim]
  and value_cache_i [kv heads, head dim, {shapes['cache']['positions']}] (inputs only) -> logits, new_keys / new_values
  [layers, kv heads, 1, head dim] of the token at `index`; the caller writes those rows into the cache inputs
  (`ExportedModel.generate_ids` does, in place inside the interpreter)
{optional_signatures(shapes['cache'], variant.get('signatures'))}"""


def optional_signatures(cache: dict, signatures: list[str] | None = None) -> str:
    """Model-card lines of the prompt buckets and decode_batch that the file has: `signatures`, the file's own
    list (the Optimizer records it; full_int8 files have neither), or all the manifest names when unknown."""
    has = (lambda name: True) if signatures is None else set(signatures).__contains__
    lines, rows = [], cache.get("decode_rows", 0) if has("decode_batch") else 0
    for length in [n for n in cache.get("prompt_buckets", []) if has(f"prefill_{n}")]:
        lines.append(f"- `prefill_{length}` / `score_labels_{length}`: `prefill` / `score_labels` for prompts of at "
                     f"most {length} tokens, in that many positions' time (the same weights)")
    if rows > 1:
        lines.append(f"- `decode_batch`: `decode` for {rows} sequences at once, each at its own position: token_id "
                     f"[{rows}, 1], index [{rows}], key_cache_i [{rows}, kv heads, {cache['positions']}, head dim], "
                     f"value_cache_i [{rows}, kv heads, head dim, {cache['positions']}] -> logits [{rows}, vocab], "
                     f"new_keys / new_values [layers, {rows}, kv heads, 1, head dim] (`ExportedModel.generate_batch`)")
    return "".join(line + "\n" for line in lines)


def model_card(name: str, variant: dict, evaluation: dict, base_config: dict, blessing: dict, shapes: dict) -> str:
    metric_rows = "\n".join(f"| {key} | {value:.4f} |" for key, value in evaluation.items()
                            if isinstance(value, float))
    reasons = "\n".join(f"- {reason}" for reason in blessing.get("reasons", []))
    strings = """
## String signatures (this SavedModel only; tokenisation inside the graph, see `models.export.string_signatures`)

Load with `import tensorflow as tf, tensorflow_text` (it registers the regex-split op); fintune is not needed.

- `classify`: text [batch] string, task [] string (a task of `labels.json`) -> label, probability,
  top_k_labels, top_k_probabilities, truncated (the text was cut at its end to fit the prompt)
- `generate`: text [batch] string (one user message each, put in the chat template), max_new_tokens []
  int32 -> text (greedy, stops at <|im_end|>), truncated
""" if variant["format"] == "saved_model" else ""
    return f"""# {name} — {variant['name']}

- Base model: {base_config.get('name', 'unknown')} (license: {base_config.get('license', 'unknown')})
- Format: {variant['format']} ({variant.get('precision', 'float32')}), {variant['size_bytes']:,} bytes
- Data: fintune examples after PII masking (card numbers, IBANs, e-mails, phones, SSNs masked)

## Evaluation (test split, fine-tuned model in Keras; see the run's benchmark for this variant)

| metric | value |
|---|---|
{metric_rows}

Blessed: {blessing.get('blessed')}
{reasons}

{signatures_section(variant, shapes)}{strings}
## Intended use

Classifying banking queries, statement lines and support tickets into the label sets in
`labels.json`, with a human in the loop for decisions that affect customers.

## Limitations

Trained on the data described in the run's statistics; labels outside `labels.json` cannot be
predicted; inputs longer than the fixed input length are cut at the end of the text.
"""


class Exporter(Component):
    name = "exporter"
    version = "6"
    description = "Bundle every eligible variant with tokenizer, labels, model card and manifest; push if blessed."
    inputs = {"variants": "ModelVariants", "student": "StudentModel", "model": "Model", "evaluation": "Evaluation"}
    outputs = {"bundles": "Bundles"}
    Params = ExporterParams

    def execute(self, ctx: ExecutionContext):
        p: ExporterParams = ctx.params
        variants, model, evaluation = VariantsFiles(ctx.input("variants")), ctx.input("model"), ctx.input("evaluation")
        evaluated = EvaluationFiles(evaluation)
        manifest = variants.manifest()
        # Every variant with the folder its files are in: the Optimizer's, then the Student's.
        students = VariantsFiles(ctx.input("student"))
        sources = {v["name"]: variants for v in manifest["variants"]}
        student_variants = students.manifest()["variants"]
        sources.update({v["name"]: students for v in student_variants})
        candidates = manifest["variants"] + student_variants
        blessing = evaluated.blessing()
        base_config = ModelFiles(model).config()
        out = BundlesFiles(ctx.output_dir("bundles"))
        saved_model_variant = {"name": "saved_model_float32", "format": "saved_model", "precision": "float32",
                               "file": VariantsFiles.SAVED_MODEL, "size_bytes": size_on_disk(variants.saved_model_dir)}
        written, excluded = [], {}
        for variant in candidates:  # the compression gate decides what ships
            if not variant["gate"]["eligible"]:
                excluded[variant["name"]] = variant["gate"]["reason"]
                ctx.log(f"  not exported: {variant['name']} ({variant['gate']['reason']})")
        sources[saved_model_variant["name"]] = variants
        for variant in [saved_model_variant] + [v for v in candidates if v["name"] not in excluded]:
            bundle = out.bundle(variant["name"])
            bundle.folder.mkdir()
            source = sources[variant["name"]].file(variant["file"])
            if source.is_dir():
                shutil.copytree(source, bundle.file(variant["file"]))
            else:
                shutil.copy2(source, bundle.file(variant["file"]))
            for tokenizer_file in ModelFiles(model).tokenizer_files:
                shutil.copy2(tokenizer_file, bundle.file(tokenizer_file.name))
            shutil.copy2(evaluated.labels_file, bundle.labels_file)
            # The fixed input shapes the exported signatures were traced with (for runners and benchmark_model).
            if variant.get("kind") == "student":  # its own input shape and answer-vocabulary head
                shutil.copy2(sources[variant["name"]].file(variant["report"]), bundle.file(variant["report"]))
                shapes = {"student": {**variant["input"], "output_tokens": variant["output_tokens"]}}
            else:
                shapes = {k: manifest[k] for k in ("sequence_length", "tree", "cache")}
            bundle.shapes_file.write_text(json.dumps(shapes, indent=2))
            bundle.model_card_file.write_text(model_card(p.model_name, variant, evaluation.metrics,
                                                         base_config, blessing, shapes))
            write_manifest(bundle.folder)
            written.append(variant["name"])
        pushed_to = self._push(ctx, p, out.bundle(saved_model_variant["name"]).folder, blessing)
        out.excluded_file.write_text(json.dumps(excluded, indent=2))
        return {"bundles": {"bundles": written, "excluded": sorted(excluded), "pushed_to": pushed_to,
                            "blessed": blessing["blessed"]}}

    @staticmethod
    def _push(ctx: ExecutionContext, p: ExporterParams, bundle: Path, blessing: dict) -> str | None:
        if not p.push:
            ctx.log("  push disabled (exporter.push=false)")
            return None
        if not blessing["blessed"] and not p.force_push:
            ctx.log("  not pushed: the model is not blessed (" + "; ".join(
                r for r in blessing["reasons"] if r.startswith("FAIL")) + "); --set exporter.force_push=true overrides")
            return None
        pushed = push_bundle(bundle, Path(p.serving_dir) / p.model_name)
        ctx.log(f"  pushed to {pushed}" + ("" if blessing["blessed"] else " (forced, not blessed)"))
        return str(pushed)

"""One model version, run: the SavedModel's string signatures, or a TFLite bundle through LiteRT.

Every backend serves the same two string-level signatures, so a client does not care which file
answers: `classify(text [batch], task [])` -> label, probability, top_k_labels, top_k_probabilities,
truncated; `generate(text [batch], max_new_tokens [])` -> text, truncated (the student only
classifies). The SavedModel runs its own in-graph signatures (`models.export.string_signatures`) and also serves its
numeric ones (`serve`, `score_labels`, `prefill`, `decode`) unbatched; a TFLite bundle runs
`models.export.exported.ExportedModel` (teacher) or `models.student.model.StudentScorer` (student) with the
bundle's tokenizer, in Python, by the same prompt and truncation rules (`models.llm.prompts.encode_prompt`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.artifacts import PUSHED_EXTRAS, BundleFiles
from serving.errors import InvalidArgument

CLASSIFY, GENERATE = "classify", "generate"
TOP_K = 5  # labels in top_k_labels, as the SavedModel's ServingSignatures.top_k (fewer when a task has fewer)


@dataclass(frozen=True)
class TensorInfo:
    """What TF Serving's metadata says of one input or output: dtype and shape (-1 = any size)."""

    dtype: str  # "DT_STRING", "DT_FLOAT", ...
    shape: tuple[int, ...]


TEXT_BATCH = TensorInfo("DT_STRING", (-1,))
STRING_SIGNATURES = {
    CLASSIFY: {"inputs": {"text": TEXT_BATCH, "task": TensorInfo("DT_STRING", ())},
               "outputs": {"label": TEXT_BATCH, "probability": TensorInfo("DT_FLOAT", (-1,)),
                           "top_k_labels": TensorInfo("DT_STRING", (-1, -1)),
                           "top_k_probabilities": TensorInfo("DT_FLOAT", (-1, -1)),
                           "truncated": TensorInfo("DT_BOOL", (-1,))}},
    GENERATE: {"inputs": {"text": TEXT_BATCH, "max_new_tokens": TensorInfo("DT_INT32", ())},
               "outputs": {"text": TEXT_BATCH, "truncated": TensorInfo("DT_BOOL", (-1,))}},
}


def _plain(value):
    """numpy/bytes -> JSON-ready Python values (strings decoded as UTF-8)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value] if value.ndim else _plain(value.item())
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


class Backend:
    """The interface the server uses; `run` takes a batch along `text` for the string signatures."""

    kind = "?"
    labels: dict[str, list[str]]
    signatures: dict[str, dict[str, dict[str, TensorInfo]]]

    def run(self, signature: str, inputs: dict) -> dict[str, list]:
        """Outputs by name, each a list along the batch (JSON-ready)."""
        raise NotImplementedError

    @property
    def batched_signatures(self) -> tuple[str, ...]:
        return tuple(s for s in (CLASSIFY, GENERATE) if s in self.signatures)


class SavedModelBackend(Backend):
    kind = "saved_model"

    def __init__(self, path: Path, extras: Path):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  (registers the regex-split op of the string signatures)

        self._tf = tf
        self._loaded = tf.saved_model.load(str(path))  # the signatures need the loaded object alive
        self._functions = dict(self._loaded.signatures.items())
        self.labels = BundleFiles(extras).labels()
        self.signatures = {}
        for key, function in self._functions.items():
            specs = function.structured_input_signature[1]
            outputs = function.structured_outputs
            self.signatures[key] = {
                "inputs": {n: TensorInfo(f"DT_{s.dtype.name.upper()}", tuple(-1 if d is None else d for d in s.shape))
                           for n, s in specs.items()},
                "outputs": {n: TensorInfo(f"DT_{s.dtype.name.upper()}", tuple(-1 if d is None else d for d in s.shape))
                            for n, s in outputs.items()}}

    def run(self, signature: str, inputs: dict) -> dict[str, list]:
        tf = self._tf
        specs = self._functions[signature].structured_input_signature[1]
        try:
            tensors = {name: tf.constant(value, dtype=specs[name].dtype) for name, value in inputs.items()}
            outputs = self._functions[signature](**tensors)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError) as error:
            message = getattr(error, "message", None) or str(error)
            raise InvalidArgument(f"{signature}: {message.strip().splitlines()[0]}") from None
        return {name: _plain(value.numpy()) for name, value in outputs.items()}


class TFLiteBackend(Backend):
    """The int8/float TFLite teacher (four fixed-shape signatures) or the int8 student, one request at a time."""

    def __init__(self, path: Path, bundle: Path, num_threads: int):
        from models.llm.tokenizer import ChatTokenizer
        from models.scoring.constrained import LabelTrie

        self.tokenizer = ChatTokenizer.load(bundle)
        self.labels = BundleFiles(bundle).labels()
        self.tries = {task: LabelTrie(names, self.tokenizer) for task, names in self.labels.items()}
        shapes = BundleFiles(bundle).shapes()
        if "student" in shapes:
            from models.student.compression import tflite_student_fn
            from models.student.model import StudentScorer

            self.kind, student = "student_tflite", shapes["student"]
            scorer = StudentScorer(tflite_student_fn(path, num_threads), student["output_tokens"],
                                   student["max_length"])
            self._classify, self.max_prompt_tokens = scorer.classify, student["max_prompt_tokens"]
            self.signatures = {CLASSIFY: STRING_SIGNATURES[CLASSIFY]}
        else:
            from models.export.exported import ExportedModel

            self.kind, self.model = "tflite", ExportedModel(path, num_threads=num_threads)
            nodes = shapes["tree"]["nodes"]
            self._classify = lambda prompts, trie: self.model.classify(prompts, trie, nodes)
            self.max_prompt_tokens = shapes["tree"]["prompt_tokens"]
            self.signatures = dict(STRING_SIGNATURES)

    def run(self, signature: str, inputs: dict) -> dict[str, list]:
        return self._classify_texts(**inputs) if signature == CLASSIFY else self._generate_texts(**inputs)

    def _classify_texts(self, text: list[str], task: str) -> dict[str, list]:
        from models.llm.prompts import encode_prompt

        encoded = [encode_prompt(self.tokenizer, task, t, self.max_prompt_tokens) for t in text]
        predictions = self._classify([ids for ids, _ in encoded], self.tries[task])
        k = min(TOP_K, len(self.labels[task]))
        return {"label": [p.label for p in predictions], "probability": [p.probability for p in predictions],
                "top_k_labels": [[label for label, _ in p.ranking[:k]] for p in predictions],
                "top_k_probabilities": [[prob for _, prob in p.ranking[:k]] for p in predictions],
                "truncated": [cut for _, cut in encoded]}

    def _generate_texts(self, text: list[str], max_new_tokens: int) -> dict[str, list]:
        prompts = [self._chat_prompt(message) for message in text]
        # The KV cache holds the prompt and the new tokens. A batch of requests decodes together through the
        # export's decode_batch signature when it has one (the same tokens as one request at a time).
        limits = [min(max_new_tokens, self.model.cache_length - len(ids)) for ids, _ in prompts]
        new = self.model.generate_batch([ids for ids, _ in prompts], limits,
                                        (self.tokenizer.im_end_id, self.tokenizer.end_of_text_id))
        return {"text": [self.tokenizer.decode(ids) for ids in new], "truncated": [cut for _, cut in prompts]}

    def _chat_prompt(self, message: str) -> tuple[list[int], bool]:
        """The chat prompt's ids; a message too long for the export loses its end (`encode_prompt`'s rule)."""
        from models.llm.chat import apply_chat_template

        full = apply_chat_template(self.tokenizer, [{"role": "user", "content": message}])
        ids, limit = self.tokenizer.encode(full), self.model.prompt_length
        if len(ids) <= limit:
            return ids, False
        head, tail = full.split(message, 1)
        head_ids, tail_ids = self.tokenizer.encode(head), self.tokenizer.encode(tail)
        return head_ids + self.tokenizer.encode(message)[:limit - len(head_ids) - len(tail_ids)] + tail_ids, True


def load_backend(version_dir: Path, num_threads: int) -> Backend:
    """The backend for a version folder: a pushed SavedModel (saved_model.pb) or a TFLite bundle (one .tflite)."""
    if (version_dir / "saved_model.pb").exists():
        return SavedModelBackend(version_dir, version_dir / PUSHED_EXTRAS)
    models = sorted(version_dir.glob("*.tflite"))
    if len(models) != 1:
        raise ValueError(f"{version_dir} holds neither saved_model.pb nor exactly one .tflite file")
    return TFLiteBackend(models[0], version_dir, num_threads)

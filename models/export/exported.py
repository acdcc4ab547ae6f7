"""Running what the export wrote: one interface over a `.tflite` file (LiteRT) or a SavedModel folder.

Both hold the same fixed-shape signatures (see `models.export.convert`): `serve` (full-sequence logits),
`score_labels` (every label in one pass), `prefill`/`decode` (generation with a KV cache). The
shapes are read from the signatures themselves. The TFLite interpreter runs without the Flex
delegate, as the stock `benchmark_model` tool and mobile runtimes do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.export.endpoints import DECODE_ENDPOINT, ENDPOINT, PREFILL_ENDPOINT, SCORE_ENDPOINT
from models.scoring.constrained import LabelTrie, Prediction, right_padded, tree_inputs


class ExportedModel:
    def __init__(self, path: Path, num_threads: int | None = None):
        path = Path(path)
        self.path = path
        if path.is_dir():
            import tensorflow as tf
            import tensorflow_text  # noqa: F401  (registers the ops of the string signatures, `models.export.string_signatures`)

            loaded = tf.saved_model.load(str(path))
            self._functions = {key: loaded.signatures[key] for key in loaded.signatures.keys()}
            self._keep = loaded  # the signatures need the loaded object alive
            self.shapes = {key: {name: tuple(spec.shape) for name, spec in f.structured_input_signature[1].items()}
                           for key, f in self._functions.items()}
        else:
            from ai_edge_litert.interpreter import Interpreter

            self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
            self._functions = {key: self._interpreter.get_signature_runner(key)
                               for key in self._interpreter.get_signature_list()}
            self.shapes = {key: {name: tuple(d["shape"]) for name, d in f.get_input_details().items()}
                           for key, f in self._functions.items()}

    def call(self, key: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        if key not in self._functions:
            raise ValueError(f"{self.path.name} has no '{key}' signature (it has {sorted(self._functions)})")
        outputs = self._functions[key](**{name: np.asarray(value) for name, value in inputs.items()})
        return {name: np.asarray(value) for name, value in outputs.items()}

    # -- serve: full-sequence logits ---------------------------------------------------------
    @property
    def sequence_length(self) -> int:
        return self.shapes[ENDPOINT]["token_ids"][1]

    def logits(self, token_ids: np.ndarray, padding_mask: np.ndarray) -> np.ndarray:
        """(1, T, vocab): the `logits_fn` interface of `compare_logits` and `classify_with_logits_fn`."""
        (output,) = self.call(ENDPOINT, token_ids=token_ids.astype(np.int32),
                              padding_mask=padding_mask.astype(np.int32)).values()
        return output

    __call__ = logits

    # -- score_labels: exact label scores in one pass ------------------------------------------
    def tree_shape(self, num_nodes: int) -> tuple[int, int, int]:
        """(prompt tokens, nodes, edges); the export's node count comes from its shapes.json."""
        shapes = self.shapes[SCORE_ENDPOINT]
        return shapes["positions"][0] - num_nodes, num_nodes, shapes["edge_tokens"][0]

    def classify(self, prompts: list[list[int]], trie: LabelTrie, num_nodes: int) -> list[Prediction]:
        results = []
        for prompt in prompts:
            inputs = tree_inputs([prompt], trie, *self.tree_shape(num_nodes))
            (log_probs,) = self.call(SCORE_ENDPOINT, **inputs).values()
            results.extend(trie.predictions(log_probs))
        return results

    # -- prefill / decode: generation with the KV cache ----------------------------------------
    @property
    def prompt_length(self) -> int:
        return self.shapes[PREFILL_ENDPOINT]["token_ids"][1]

    @property
    def cache_length(self) -> int:
        return self.shapes[DECODE_ENDPOINT]["cache"][2]

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int, stop_ids: tuple[int, ...] = ()) -> list[int]:
        """Greedy new token ids after `prompt_ids` (stop token excluded); stops early when the cache is full.

        A prompt longer than the exported prompt length is refused (callers cut it first with
        `encode_prompt`'s documented rule), never handed to the interpreter.
        """
        if not 0 < len(prompt_ids) <= self.prompt_length:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; this export takes 1 to {self.prompt_length}")
        token_ids, _ = right_padded(prompt_ids, self.prompt_length, 0)
        out = self.call(PREFILL_ENDPOINT, token_ids=token_ids,
                        last_index=np.array([len(prompt_ids) - 1], dtype=np.int32))
        generated = []
        for index in range(len(prompt_ids), len(prompt_ids) + max_new_tokens):
            token = int(np.argmax(out["logits"][0]))
            if token in stop_ids:
                break
            generated.append(token)
            if index == self.cache_length or len(generated) == max_new_tokens:
                break  # the cache has no room to decode another token
            out = self.call(DECODE_ENDPOINT, token_id=np.array([[token]], dtype=np.int32), cache=out["cache"],
                            index=np.array([index], dtype=np.int32))
        return generated

"""Running what the export wrote: one interface over a `.tflite` file (LiteRT) or a SavedModel folder.

Both hold the same fixed-shape signatures (see `models.export.convert`): `serve` (full-sequence logits),
`score_labels` (every label in one pass), `prefill`/`decode` (generation with a KV cache). The
shapes are read from the signatures themselves. The TFLite interpreter runs without the Flex
delegate, as the stock `benchmark_model` tool and mobile runtimes do.

Generation keeps the KV cache inside the interpreter: the `decode` signature's per-layer cache inputs
are written in place (one token's rows per step, `InterpreterCache`) and the subgraph is invoked
directly, so no step copies the cache through Python. Measured on SmolLM2-135M dynamic int8 (2
threads, 256 positions, interleaved runs): 7.2 ms per token, against 8.1 ms when `SignatureRunner`
copies the same inputs in on every call and 10.1 ms for the previous single-tensor cache passed in and
out. LiteRT's `CompiledModel` binds host memory without a copy too, but only as 1-D buffers; the
reshape a flat cache input then needs copies the cache inside XNNPACK (7.9 ms).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.export.endpoints import DECODE_ENDPOINT, ENDPOINT, PREFILL_ENDPOINT, SCORE_ENDPOINT
from models.export.kv_cache import NEW_KEYS, NEW_VALUES, CacheLayout, HostCache, cache_names, write_rows
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
            self.shapes = {key: {name: tuple(int(n) for n in d["shape"]) for name, d in f.get_input_details().items()}
                           for key, f in self._functions.items()}
        self._cache = None  # the decode signature's cache, made on first use

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
        return CacheLayout.from_input_shapes(self.shapes[DECODE_ENDPOINT]).positions

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int, stop_ids: tuple[int, ...] = ()) -> list[int]:
        """Greedy new token ids after `prompt_ids` (stop token excluded); stops early when the cache is full.

        A prompt longer than the exported prompt length is refused (callers cut it first with
        `encode_prompt`'s documented rule), never handed to the interpreter.
        """
        if not 0 < len(prompt_ids) <= self.prompt_length:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; this export takes 1 to {self.prompt_length}")
        if self._cache is None:
            layout = CacheLayout.from_input_shapes(self.shapes[DECODE_ENDPOINT])
            self._cache = (SavedModelCache(self._functions[DECODE_ENDPOINT], layout) if self.path.is_dir()
                           else InterpreterCache(self._interpreter, self._functions[DECODE_ENDPOINT], layout))
        token_ids, _ = right_padded(prompt_ids, self.prompt_length, 0)
        out = self.call(PREFILL_ENDPOINT, token_ids=token_ids,
                        last_index=np.array([len(prompt_ids) - 1], dtype=np.int32))
        # Positions past the prompt hold the padding's rows or an earlier generation's: never attended
        # (decode at index sees positions < index only), and overwritten as decoding reaches them.
        self._cache.write(out[NEW_KEYS], out[NEW_VALUES], 0, len(prompt_ids))
        logits, generated = out["logits"], []
        for index in range(len(prompt_ids), len(prompt_ids) + max_new_tokens):
            token = int(np.argmax(logits[0]))
            if token in stop_ids:
                break
            generated.append(token)
            if index == self.cache_length or len(generated) == max_new_tokens:
                break  # the cache has no room to decode another token
            logits = self._cache.decode(token, index)
        return generated


class InterpreterCache:
    """The `decode` signature's cache where it lives: the interpreter's own input tensors of that subgraph.

    Each step sets the token and index, invokes the subgraph and writes the step's new keys and values
    into the cache inputs through numpy views of the tensors (made per write, never held across an
    invoke). The subgraph is allocated once; its input buffers stay put because its shapes never change,
    and TFLite's arena never reuses graph inputs' memory.
    """

    def __init__(self, interpreter, runner, layout: CacheLayout):
        self._interpreter, self._wrapper = interpreter, interpreter._interpreter
        # The public Interpreter.tensor() reaches the first subgraph only; this is the wrapper call it makes.
        self._subgraph = runner._subgraph_index
        inputs, self._outputs = runner._inputs, dict(runner._outputs)
        self._token, self._index = inputs["token_id"], inputs["index"]
        key_names, value_names = cache_names(layout.num_layers)
        self._keys, self._values = [inputs[n] for n in key_names], [inputs[n] for n in value_names]
        self._wrapper.AllocateTensors(self._subgraph)
        keys, values = self._views()
        for view in keys + values:
            view.fill(0)  # fresh arena memory may hold NaN patterns, and 0 x NaN is NaN even where masked
        del keys, values

    def _views(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        view = lambda i: self._wrapper.tensor(self._interpreter, i, self._subgraph)  # noqa: E731
        return [view(i) for i in self._keys], [view(i) for i in self._values]

    def write(self, new_keys: np.ndarray, new_values: np.ndarray, index: int, count: int | None = None) -> None:
        keys, values = self._views()
        write_rows(keys, values, new_keys, new_values, index, count)

    def decode(self, token: int, index: int) -> np.ndarray:
        """Logits [1, V] of `token` at position `index`, whose keys and values then join the cache."""
        self._wrapper.SetTensor(self._token, np.array([[token]], np.int32), self._subgraph)
        self._wrapper.SetTensor(self._index, np.array([index], np.int32), self._subgraph)
        self._wrapper.Invoke(self._subgraph)
        self.write(self._wrapper.GetTensor(self._outputs[NEW_KEYS], self._subgraph),
                   self._wrapper.GetTensor(self._outputs[NEW_VALUES], self._subgraph), index)
        return self._wrapper.GetTensor(self._outputs["logits"], self._subgraph)


class SavedModelCache:
    """The same steps through a SavedModel's `decode` signature, whose inputs are passed on every call."""

    def __init__(self, function, layout: CacheLayout):
        self._function, self._cache = function, HostCache(layout)

    def write(self, new_keys: np.ndarray, new_values: np.ndarray, index: int, count: int | None = None) -> None:
        self._cache.write(new_keys, new_values, index, count)

    def decode(self, token: int, index: int) -> np.ndarray:
        out = self._function(token_id=np.array([[token]], np.int32), index=np.array([index], np.int32),
                             **self._cache.inputs)
        out = {name: np.asarray(value) for name, value in out.items()}
        self.write(out[NEW_KEYS], out[NEW_VALUES], index)
        return out["logits"]

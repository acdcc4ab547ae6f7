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

A prompt is prefilled and scored by the shortest `prefill` / `score_labels` signature that holds it
(`prefill_N` / `score_labels_N` buckets, when the export has them: a 60-token prompt need not pay for 192
positions).

`generate_batch` runs several prompts through the `decode_batch` signature when the export has one: each
prompt is prefilled alone into its row of the batched cache, then every decode step advances all rows,
each at its own position, so B generations cost about one weight read per token instead of B.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.export.endpoints import DECODE_BATCH_ENDPOINT, DECODE_ENDPOINT, ENDPOINT, PREFILL_ENDPOINT, SCORE_ENDPOINT
from models.export.kv_cache import NEW_KEYS, NEW_VALUES, CacheLayout, HostCache, cache_names, write_rows, write_step
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
        self._caches = {}  # {decode signature: its cache}, made on first use

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
    def tree_shape(self, num_nodes: int, signature: str = SCORE_ENDPOINT) -> tuple[int, int, int]:
        """(prompt tokens, nodes, edges) of a `score_labels` signature; the node count comes from shapes.json."""
        shapes = self.shapes[signature]
        return shapes["positions"][0] - num_nodes, num_nodes, shapes["edge_tokens"][0]

    def classify(self, prompts: list[list[int]], trie: LabelTrie, num_nodes: int) -> list[Prediction]:
        """Each prompt through the shortest `score_labels` signature that holds it (`score_labels_N` buckets)."""
        results = []
        for prompt in prompts:
            key = self._shortest(SCORE_ENDPOINT, len(prompt), lambda shapes: shapes["positions"][0] - num_nodes)
            prompt_tokens, nodes, edges = self.tree_shape(num_nodes, key)
            inputs = tree_inputs([prompt], trie, prompt_tokens, nodes, edges)
            (log_probs,) = self.call(key, **inputs).values()
            results.extend(trie.predictions(log_probs))
        return results

    def _shortest(self, signature: str, prompt_tokens: int, capacity) -> str:
        """`signature` or the shortest of its `signature_N` prompt buckets whose `capacity(input shapes)` holds
        `prompt_tokens` (the signature itself when none does: it raises the too-long error)."""
        keys = [k for k in self.shapes if k == signature or (k.startswith(signature + "_")
                                                                and k[len(signature) + 1:].isdigit())]
        fitting = [(capacity(self.shapes[k]), k) for k in keys if capacity(self.shapes[k]) >= prompt_tokens]
        return min(fitting)[1] if fitting else signature

    # -- prefill / decode: generation with the KV cache ----------------------------------------
    @property
    def prompt_length(self) -> int:
        return self.shapes[PREFILL_ENDPOINT]["token_ids"][1]

    @property
    def cache_length(self) -> int:
        return CacheLayout.from_input_shapes(self.shapes[DECODE_ENDPOINT]).positions

    def prefill_for(self, prompt_tokens: int) -> tuple[int, str]:
        """(length, signature) of the shortest prefill signature that holds `prompt_tokens` tokens: `prefill`,
        or one of the shorter `prefill_N` buckets when the export has them."""
        key = self._shortest(PREFILL_ENDPOINT, prompt_tokens, lambda shapes: shapes["token_ids"][1])
        return self.shapes[key]["token_ids"][1], key

    @property
    def decode_rows(self) -> int:
        """Sequences one decode step advances: the `decode_batch` signature's rows, or 1 without one."""
        return self.shapes[DECODE_BATCH_ENDPOINT]["token_id"][0] if DECODE_BATCH_ENDPOINT in self.shapes else 1

    def _cache(self, key: str):
        if key not in self._caches:
            layout = CacheLayout.from_input_shapes(self.shapes[key])
            self._caches[key] = (SavedModelCache(self._functions[key], layout) if self.path.is_dir()
                                 else InterpreterCache(self._interpreter, self._functions[key], layout))
        return self._caches[key]

    def _check_prompt(self, prompt_ids: list[int]) -> None:
        """A prompt longer than the exported prompt length is refused (callers cut it first with
        `encode_prompt`'s documented rule), never handed to the interpreter."""
        if not 0 < len(prompt_ids) <= self.prompt_length:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; this export takes 1 to {self.prompt_length}")

    def _prefill(self, prompt_ids: list[int], cache, row: int | None = None) -> np.ndarray:
        """Logits [V] after `prompt_ids`, whose keys and values are written into `cache` (row `row` of a batch)."""
        self._check_prompt(prompt_ids)
        length, key = self.prefill_for(len(prompt_ids))
        token_ids, _ = right_padded(prompt_ids, length, 0)
        out = self.call(key, token_ids=token_ids, last_index=np.array([len(prompt_ids) - 1], dtype=np.int32))
        # Positions past the prompt hold the padding's rows or an earlier generation's: never attended
        # (decode at index sees positions < index only), and overwritten as decoding reaches them.
        cache.write(out[NEW_KEYS], out[NEW_VALUES], 0, len(prompt_ids), row)
        return out["logits"][0]

    def _greedy(self, logits: np.ndarray, stop_ids, index: int, generated: list[int], limit: int) -> bool:
        """One greedy choice at cache position `index`: appends the token to `generated` unless it is a stop id,
        and says whether the sequence is finished (a stop id, the limit reached, or no room left in the cache).
        The one stopping rule of `generate_ids` and `generate_batch`."""
        token = int(np.argmax(logits))
        if token in stop_ids:
            return True
        generated.append(token)
        return index == self.cache_length or len(generated) == limit

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int, stop_ids: tuple[int, ...] = ()) -> list[int]:
        """Greedy new token ids after `prompt_ids` (stop token excluded); stops early when the cache is full."""
        cache = self._cache(DECODE_ENDPOINT)
        logits, generated = self._prefill(prompt_ids, cache), []
        for index in range(len(prompt_ids), len(prompt_ids) + max_new_tokens):
            if self._greedy(logits, stop_ids, index, generated, max_new_tokens):
                break
            logits = cache.decode(generated[-1], index)[0]
        return generated

    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int | list[int],
                       stop_ids: tuple[int, ...] = ()) -> list[list[int]]:
        """`generate_ids` of every prompt (a token limit for all or one per prompt), `decode_rows` prompts at a
        time through `decode_batch`; one prompt at a time without that signature, and for a group of one (an
        8-row step costs more than a 1-row one). The same tokens either way."""
        limits = [int(max_new_tokens)] * len(prompts) if np.ndim(max_new_tokens) == 0 else list(max_new_tokens)
        if len(limits) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(limits)} token limits")
        for prompt in prompts:  # before any work: a bad prompt late in the list wastes no earlier generation
            self._check_prompt(prompt)
        rows, results = self.decode_rows, []
        for start in range(0, len(prompts), rows):
            group, group_limits = prompts[start:start + rows], limits[start:start + rows]
            if len(group) == 1:
                results.append(self.generate_ids(group[0], group_limits[0], stop_ids))
            else:
                results.extend(self._generate_rows(group, group_limits, stop_ids))
        return results

    def _generate_rows(self, prompts, limits, stop_ids) -> list[list[int]]:
        cache = self._cache(DECODE_BATCH_ENDPOINT)
        logits = [self._prefill(prompt, cache, row) for row, prompt in enumerate(prompts)]
        # Rows past the prompts, and rows that have finished, decode token 0 at position 0 (they attend to
        # nothing earlier, so no NaN) and their outputs are ignored.
        tokens, indexes = np.zeros(cache.layout.rows, np.int32), np.zeros(cache.layout.rows, np.int32)
        generated, active = [[] for _ in prompts], {row for row, limit in enumerate(limits) if limit > 0}
        for row in active:
            indexes[row] = len(prompts[row])
        while active:
            for row in sorted(active):
                if self._greedy(logits[row], stop_ids, int(indexes[row]), generated[row], limits[row]):
                    active.discard(row)
                    tokens[row] = indexes[row] = 0
                else:
                    tokens[row] = generated[row][-1]
            if not active:
                break
            step = cache.step(tokens[:, None], indexes)
            for row in active:
                logits[row] = step[row]
                indexes[row] += 1
        return generated


class _DecodeCache:
    """A decode signature's cache and its steps: `write` a prefill's rows, `step` the signature once.

    Subclasses say where the cache lives (`_arrays`) and how the signature runs (`_run`)."""

    layout: CacheLayout

    def write(self, new_keys: np.ndarray, new_values: np.ndarray, index: int, count: int | None = None,
              row: int | None = None) -> None:
        keys, values = self._arrays()
        write_rows(keys, values, new_keys, new_values, index, count, row)

    def step(self, tokens: np.ndarray, indexes: np.ndarray) -> np.ndarray:
        """Logits [rows, V] of `tokens` [rows, 1] at positions `indexes` [rows], whose keys and values then join
        the cache (rows = 1 for the unbatched `decode`)."""
        out = self._run(np.asarray(tokens, np.int32), np.asarray(indexes, np.int32))
        keys, values = self._arrays()
        if self.layout.rows:
            write_step(keys, values, out[NEW_KEYS], out[NEW_VALUES], indexes)
        else:
            write_rows(keys, values, out[NEW_KEYS], out[NEW_VALUES], int(indexes[0]))
        return out["logits"]

    def decode(self, token: int, index: int) -> np.ndarray:
        """Logits [1, V] of `token` at position `index` (the unbatched `decode`)."""
        return self.step(np.array([[token]]), np.array([index]))


class InterpreterCache(_DecodeCache):
    """A decode signature's cache where it lives: the interpreter's own input tensors of that subgraph.

    Each step sets the tokens and indexes, invokes the subgraph and writes the step's new keys and values
    into the cache inputs through numpy views of the tensors (made per write, never held across an
    invoke). The subgraph is allocated once; its input buffers stay put because its shapes never change,
    and TFLite's arena never reuses graph inputs' memory.
    """

    def __init__(self, interpreter, runner, layout: CacheLayout):
        self.layout = layout
        self._interpreter, self._wrapper = interpreter, interpreter._interpreter
        # The public Interpreter.tensor() reaches the first subgraph only; this is the wrapper call it makes.
        self._subgraph = runner._subgraph_index
        inputs, self._outputs = runner._inputs, dict(runner._outputs)
        self._token, self._index = inputs["token_id"], inputs["index"]
        key_names, value_names = cache_names(layout.num_layers)
        self._keys, self._values = [inputs[n] for n in key_names], [inputs[n] for n in value_names]
        self._wrapper.AllocateTensors(self._subgraph)
        keys, values = self._arrays()
        for view in keys + values:
            view.fill(0)  # fresh arena memory may hold NaN patterns, and 0 x NaN is NaN even where masked
        del keys, values

    def _arrays(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        view = lambda i: self._wrapper.tensor(self._interpreter, i, self._subgraph)  # noqa: E731
        return [view(i) for i in self._keys], [view(i) for i in self._values]

    def _run(self, tokens: np.ndarray, indexes: np.ndarray) -> dict[str, np.ndarray]:
        self._wrapper.SetTensor(self._token, tokens, self._subgraph)
        self._wrapper.SetTensor(self._index, indexes, self._subgraph)
        self._wrapper.Invoke(self._subgraph)
        return {name: self._wrapper.GetTensor(self._outputs[name], self._subgraph)
                for name in ("logits", NEW_KEYS, NEW_VALUES)}


class SavedModelCache(_DecodeCache):
    """The same steps through a SavedModel's decode signature, whose inputs are passed on every call."""

    def __init__(self, function, layout: CacheLayout):
        self.layout, self._function, self._cache = layout, function, HostCache(layout)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self._cache.keys, self._cache.values

    def _run(self, tokens: np.ndarray, indexes: np.ndarray) -> dict[str, np.ndarray]:
        out = self._function(token_id=tokens, index=indexes, **self._cache.inputs)
        return {name: np.asarray(value) for name, value in out.items()}

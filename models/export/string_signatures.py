"""String-in SavedModel signatures: `classify` and `generate`, with tokenisation inside the graph.

They sit in the same SavedModel as the fixed-shape numeric signatures (`models.export.convert`) and run in
a process that has only `tensorflow` and `tensorflow_text` imported:

    import tensorflow as tf, tensorflow_text  # noqa: F401  (registers the regex-split op)
    model = tf.saved_model.load(path)
    model.signatures["classify"](text=tf.constant(["where is my card?"]), task=tf.constant("intent"))
    model.signatures["generate"](text=tf.constant(["Hello"]), max_new_tokens=tf.constant(32))

`classify(text [batch] string, task [] string)` -> `label` [batch] string, `probability` [batch],
`top_k_labels` [batch, k] string, `top_k_probabilities` [batch, k] (k = min(top_k, the task's label
count)), `truncated` [batch] bool. The prompt is `format_prompt(task, text)`; labels are scored
exactly as `models.scoring.constrained.classify` does (one tree-attention pass for the batch). An unknown
task fails the call with InvalidArgumentError "unknown task ... known tasks: ...".

`generate(text [batch] string, max_new_tokens [] int32)` -> `text` [batch] string, `truncated`
[batch] bool: the reply to one user message in the model's chat template (as `models.llm.chat.respond`),
greedy, stopped at <|im_end|> or <|endoftext|>. max_new_tokens is clipped to [0, the export's
`max_new_tokens`]; the KV cache holds the prompt plus that many tokens.

Over-long input: `encode_prompt`'s documented rule, in the graph. The whole prompt is tokenised;
if it has more than `max_prompt_tokens` ids (`max_chat_prompt_tokens` for generate), the template
is kept whole and the end of the text is cut (head ids + text ids[:budget] + tail ids, the head and
tail tokenised on their own) and `truncated` is true. No input crashes the
call: invalid UTF-8 is read as U+FFFD, and the empty string is a valid (empty) text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from models.export.graph_tokenizer import GraphTokenizer
from models.llm.chat import apply_chat_template
from models.llm.prompts import format_prompt
from models.llm.tokenizer import ChatTokenizer
from models.scoring.constrained import LabelTrie, cached_hidden_states, edge_log_probs, last_token_logits

CLASSIFY_ENDPOINT, GENERATE_ENDPOINT = "classify", "generate"
STRING_ENDPOINTS = (CLASSIFY_ENDPOINT, GENERATE_ENDPOINT)
_MARK = "\ue000fintune-text\ue000"  # stands for the text while a template is split around it


def _around_text(rendered: str) -> tuple[str, str]:
    """(before, after) the text in a template rendered with `_MARK` as the text."""
    if rendered.count(_MARK) != 1:
        raise ValueError("the prompt template does not insert the text exactly once, unchanged")
    before, after = rendered.split(_MARK)
    return before, after


class PromptTemplate(tf.Module):
    """Per template (a task's prompt, the chat template): text in -> prompt ids, cut by the documented rule.

    The head and tail are the template's parts before and after the text (`encode_prompt` splits the
    prompt at the text's first occurrence: the same unless the text also occurs inside the template).
    """

    def __init__(self, tokenizer: ChatTokenizer, templates: list[tuple[str, str]], max_prompt_tokens: int):
        super().__init__()
        self.max_prompt_tokens = max_prompt_tokens
        heads = [tokenizer.encode(before) for before, _ in templates]
        tails = [tokenizer.encode(after) for _, after in templates]
        budgets = [max_prompt_tokens - len(h) - len(t) for h, t in zip(heads, tails)]
        if min(budgets) <= 0:
            raise ValueError(f"max_prompt_tokens={max_prompt_tokens} cannot hold the prompt template")
        self.before = tf.constant([before for before, _ in templates])
        self.after = tf.constant([after for _, after in templates])
        self.head_ids = tf.ragged.constant(heads, dtype=tf.int32)
        self.tail_ids = tf.ragged.constant(tails, dtype=tf.int32)
        self.budgets = tf.constant(budgets, tf.int64)

    def __call__(self, graph_tokenizer: GraphTokenizer, texts, template):
        """(ids (batch, None) ragged int32, truncated (batch,) bool) of the texts in template `template`."""
        whole = graph_tokenizer.encode(tf.strings.join([self.before[template], texts, self.after[template]]))
        fits = whole.row_lengths() <= self.max_prompt_tokens
        batch = tf.shape(texts)[0]
        text_ids = graph_tokenizer.encode(texts)[:, :self.budgets[template]]
        cut = tf.concat([_repeat_row(self.head_ids[template], batch), text_ids,
                         _repeat_row(self.tail_ids[template], batch)], axis=1)
        rows = tf.range(batch, dtype=tf.int64)
        # Row i of the result: the whole prompt when it fits, else the cut one (row batch + i).
        choice = tf.where(fits, rows, rows + tf.cast(batch, tf.int64))
        return tf.gather(tf.concat([whole, cut], axis=0), choice), ~fits


def _repeat_row(row, times):
    """(times, len(row)) ragged: `row` repeated."""
    return tf.RaggedTensor.from_tensor(tf.tile(row[None, :], [times, 1]))


def _left_padded(ids):
    """(token_ids (batch, P), key_mask (batch, P)) int32 from ragged ids, P = the longest row."""
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    width = tf.maximum(tf.reduce_max(lengths), 1)  # the max of no rows is the smallest int32
    right = ids.to_tensor(0, shape=tf.cast(tf.stack([tf.size(lengths), width]), tf.int64))  # right-padded
    pad = (width - lengths)[:, None]  # (batch, 1)
    columns = tf.range(width)[None, :]
    key_mask = columns >= pad
    token_ids = tf.where(key_mask, tf.gather(right, tf.maximum(columns - pad, 0), batch_dims=1), 0)
    return token_ids, tf.cast(key_mask, tf.int32)


def _stacked_tries(tries: list[LabelTrie]) -> dict[str, np.ndarray]:
    """Every task's flattened label tree padded to one shape (as `tree_inputs` pads) and stacked on axis 0."""
    nodes = max(t.num_nodes for t in tries)
    edges = max(len(t.edge_tokens) for t in tries)
    labels = max(len(t.labels) for t in tries)
    tasks = len(tries)
    out = {"node_tokens": np.zeros((tasks, nodes), np.int32), "node_depths": np.zeros((tasks, nodes), np.int32),
           "ancestors": np.tile(np.eye(nodes, dtype=np.int32), (tasks, 1, 1)),
           "edge_positions": np.zeros((tasks, edges), np.int32), "edge_tokens": np.zeros((tasks, edges), np.int32),
           "label_edges": np.zeros((tasks, labels, edges), np.float64),
           "label_names": np.full((tasks, labels), "", dtype=object),
           "num_labels": np.array([len(t.labels) for t in tries], np.int32)}
    for i, trie in enumerate(tries):
        n, e = trie.num_nodes, len(trie.edge_tokens)
        out["node_tokens"][i, :n], out["node_depths"][i, :n] = trie.node_tokens, trie.node_depths
        out["ancestors"][i, :n, :n] = trie.ancestors  # padding nodes attend only to themselves
        out["edge_positions"][i] = trie.edge_positions[0]  # padding edges repeat the first; no label uses them
        out["edge_positions"][i, :e] = trie.edge_positions
        out["edge_tokens"][i] = trie.edge_tokens[0]
        out["edge_tokens"][i, :e] = trie.edge_tokens
        out["label_edges"][i, :len(trie.labels), :e] = trie.label_edge_matrix
        out["label_names"][i, :len(trie.labels)] = trie.labels
    return out


@dataclass
class ServingSignatures:
    """What the string signatures need beside the model; `export_saved_model(..., serving=this)` adds them."""

    tokenizer: ChatTokenizer
    labels: dict[str, list[str]]  # task -> its label set, for `classify`
    max_prompt_tokens: int  # classify prompts longer than this are cut by `encode_prompt`'s rule
    max_chat_prompt_tokens: int = 512  # the same for generate's prompt (chat messages run longer than queries)
    max_new_tokens: int = 256  # the most tokens one `generate` call produces
    top_k: int = 5  # labels in `top_k_labels` (fewer when a task has fewer)

    def __post_init__(self):
        if not self.labels:
            raise ValueError("classify needs at least one label task")
        if self.max_new_tokens < 1 or self.top_k < 1:
            raise ValueError("max_new_tokens and top_k must be at least 1")

    def add_endpoints(self, archive, causal_lm) -> None:
        module = ServingModule(causal_lm, self)
        archive.track(module)  # its lookup tables and constants travel with the SavedModel
        archive.add_endpoint(name=CLASSIFY_ENDPOINT, fn=module.classify, input_signature=[
            tf.TensorSpec([None], tf.string, name="text"), tf.TensorSpec([], tf.string, name="task")])
        archive.add_endpoint(name=GENERATE_ENDPOINT, fn=module.generate, input_signature=[
            tf.TensorSpec([None], tf.string, name="text"), tf.TensorSpec([], tf.int32, name="max_new_tokens")])


class ServingModule(tf.Module):
    """The graphs behind `classify` and `generate` (see the module docstring for the contract)."""

    def __init__(self, causal_lm, spec: ServingSignatures):
        super().__init__()
        self._causal_lm = causal_lm
        tokenizer = spec.tokenizer
        self.tokenizer = GraphTokenizer(tokenizer)
        self.tasks = list(spec.labels)
        self.task_names = tf.constant(self.tasks)
        task_templates = [_around_text(format_prompt(task, _MARK)) for task in self.tasks]
        self.task_prompts = PromptTemplate(tokenizer, task_templates, spec.max_prompt_tokens)
        chat = _around_text(apply_chat_template(tokenizer, [{"role": "user", "content": _MARK}]))
        self.chat_prompt = PromptTemplate(tokenizer, [chat], spec.max_chat_prompt_tokens)
        tries = _stacked_tries([LabelTrie(spec.labels[task], tokenizer) for task in self.tasks])
        self.trees = {key: tf.constant(value.tolist() if value.dtype == object else value)
                      for key, value in tries.items()}
        self.top_k, self.max_new_tokens = spec.top_k, spec.max_new_tokens
        self.stop_ids = tf.constant([tokenizer.im_end_id, tokenizer.end_of_text_id], tf.int32)

    def _task_index(self, task):
        """Index of `task`; an unknown one fails the call with a message that lists the known tasks."""
        matches = tf.where(tf.equal(self.task_names, task))[:, 0]
        check = tf.debugging.Assert(tf.size(matches) == 1, [
            "classify: unknown task", task, "; known tasks:", tf.strings.reduce_join(self.task_names, separator=", ")])
        with tf.control_dependencies([check]):
            return tf.identity(matches[0])

    def classify(self, text, task):
        t = self._task_index(task)
        trees = {key: value[t] for key, value in self.trees.items()}
        ids, truncated = self.task_prompts(self.tokenizer, text, t)
        prompt, prompt_mask = _left_padded(ids)  # (batch, P)
        batch, length = tf.shape(prompt)[0], tf.shape(prompt)[1]
        nodes = tf.shape(trees["node_tokens"])[0]
        # The flattened label tree after each prompt, as `models.scoring.constrained.tree_inputs` lays it out.
        token_ids = tf.concat([prompt, tf.tile(trees["node_tokens"][None, :], [batch, 1])], axis=1)
        positions = tf.concat([tf.range(length), length + trees["node_depths"]], axis=0)
        structure = tf.concat([
            tf.concat([tf.linalg.band_part(tf.ones([length, length], tf.int32), -1, 0),
                       tf.zeros([length, nodes], tf.int32)], axis=1),
            tf.concat([tf.ones([nodes, length], tf.int32), trees["ancestors"]], axis=1)], axis=0)
        key_mask = tf.concat([prompt_mask, tf.ones([batch, nodes], tf.int32)], axis=1)
        log_probs = edge_log_probs(self._causal_lm, token_ids, positions, structure[None] * key_mask[:, None, :],
                                   length - 1 + trees["edge_positions"], trees["edge_tokens"],
                                   head_start=length - 1)  # (batch, edges)
        scores = tf.matmul(tf.cast(log_probs, tf.float64), trees["label_edges"], transpose_b=True)  # (batch, labels)
        real = tf.range(tf.shape(scores)[1]) < trees["num_labels"]
        probabilities = tf.nn.softmax(tf.where(real[None, :], scores, tf.constant(-np.inf, tf.float64)), axis=-1)
        top = tf.math.top_k(probabilities, k=tf.minimum(self.top_k, trees["num_labels"]))  # ties: lower index first
        top_labels = tf.gather(trees["label_names"], top.indices)
        top_probabilities = tf.cast(top.values, tf.float32)
        return {"label": top_labels[:, 0], "probability": top_probabilities[:, 0], "top_k_labels": top_labels,
                "top_k_probabilities": top_probabilities, "truncated": truncated}

    def generate(self, text, max_new_tokens):
        ids, truncated = self.chat_prompt(self.tokenizer, text, 0)
        steps = tf.clip_by_value(max_new_tokens, 0, self.max_new_tokens)
        replies = tf.map_fn(lambda row: self.tokenizer.decode(self._greedy_ids(row, steps)), ids,
                            fn_output_signature=tf.TensorSpec([], tf.string))
        return {"text": replies, "truncated": truncated}

    def _greedy_ids(self, prompt, steps):
        """New token ids (stop token excluded) after `prompt` (n,), greedy, with the KV cache."""
        backbone = self._causal_lm.backbone
        n = tf.shape(prompt)[0]
        head_dim = backbone.hidden_dim // backbone.num_query_heads
        cache = tf.zeros([1, backbone.num_layers, 2, n + steps, backbone.num_key_value_heads, head_dim],
                         self._causal_lm.compute_dtype)  # room for the prompt and `steps` tokens
        x, cache = cached_hidden_states(backbone, prompt[None, :], cache, 0)

        def next_token(x):
            return tf.cast(tf.argmax(last_token_logits(backbone, x[:, -1, :])[0]), tf.int32)

        def running(i, token, cache, out):
            return (i < steps) & ~tf.reduce_any(tf.equal(token, self.stop_ids))

        def step(i, token, cache, out):
            out = out.write(i, token)

            def decode():
                x, new_cache = cached_hidden_states(backbone, token[None, None], cache, n + i)
                return next_token(x), new_cache

            # The last step reads no further logits (as `models.llm.chat.generate_ids`): no forward pass.
            token, cache = tf.cond(i + 1 < steps, decode, lambda: (token, cache))
            return i + 1, token, cache, out

        _, _, _, out = tf.while_loop(running, step, [0, next_token(x), cache, tf.TensorArray(
            tf.int32, size=0, dynamic_size=True, element_shape=[])])
        return out.stack()

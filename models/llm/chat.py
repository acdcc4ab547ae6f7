"""Chat prompts and free-text generation for the causal LM.

`apply_chat_template` renders a model's chat template. The template is Jinja; `jinja2` is used when
it is installed (sandboxed, with Hugging Face's settings). fintune does not depend on it, so the
templates fintune ships with -- SmolLM2-Instruct's ChatML template and the empty template of the
tiny smoke model -- are also rendered in plain Python, byte for byte like Jinja would.

`generate` decodes greedily (or samples) with keras-hub's KV cache through `CachedScorer`, and
stops at <|im_end|> or <|endoftext|>.
"""

from __future__ import annotations

import weakref

import numpy as np

from models.llm.prompts import DEFAULT_SYSTEM, IM_END, IM_START
from models.llm.tokenizer import ChatTokenizer

# SmolLM2-135M-Instruct's `tokenizer.chat_template`, as its GGUF stores it.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Templates rendered without jinja2, with the system message each adds when none is given.
KNOWN_CHATML_TEMPLATES = {"": DEFAULT_SYSTEM, SMOLLM2_CHAT_TEMPLATE: DEFAULT_SYSTEM}


class ChatTemplateError(ValueError):
    """A chat template that cannot be rendered here, or messages it cannot take."""


def _check_messages(messages) -> list[dict]:
    messages = list(messages)
    if not messages:
        raise ChatTemplateError("no messages to format")
    for message in messages:
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise ChatTemplateError(f"a message must be a dict with 'role' and 'content', got {message!r}")
    return messages


def render_chatml(messages, default_system: str, add_generation_prompt: bool = True) -> str:
    """SmolLM2's template in Python: ChatML turns, its default system turn first when none is given."""
    messages = _check_messages(messages)
    parts = []
    if messages[0]["role"] != "system":
        parts.append(f"{IM_START}system\n{default_system}{IM_END}\n")
    for message in messages:
        parts.append(f"{IM_START}{message['role']}\n{message['content']}{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


def render_jinja(template: str, messages, add_generation_prompt: bool = True, **variables) -> str:
    """Render a Jinja chat template the way Hugging Face `transformers` does (needs `jinja2`)."""
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ChatTemplateError("this chat template is not one fintune renders itself; install jinja2 "
                                "(`pip install jinja2`) to render it") from None

    def raise_exception(message):
        raise TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = raise_exception
    try:
        return environment.from_string(template).render(
            messages=_check_messages(messages), add_generation_prompt=add_generation_prompt, **variables)
    except TemplateError as error:
        raise ChatTemplateError(f"the chat template failed: {error}") from None


def apply_chat_template(tokenizer: ChatTokenizer | str, messages, add_generation_prompt: bool = True) -> str:
    """The prompt text for chat `messages` ([{"role", "content"}, ...]) in the tokenizer's chat template."""
    template = tokenizer if isinstance(tokenizer, str) else tokenizer.chat_template
    template = template or ""
    if template in KNOWN_CHATML_TEMPLATES:
        return render_chatml(messages, KNOWN_CHATML_TEMPLATES[template], add_generation_prompt)
    return render_jinja(template, messages, add_generation_prompt,
                        bos_token="", eos_token=IM_END)


# ----------------------------------------------------------------------------------------------
# Generation

_SCORERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _scorer_for(causal_lm):
    """One traced `CachedScorer` per model (tracing 30 layers takes seconds; reuse it)."""
    from models.scoring.constrained import CachedScorer

    scorer = _SCORERS.get(causal_lm)
    if scorer is None:
        scorer = _SCORERS[causal_lm] = CachedScorer(causal_lm)
    return scorer


def choose_token(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy when temperature is 0; else a sample from the top-p nucleus of softmax(logits / T)."""
    if temperature <= 0.0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    probabilities = np.exp(scaled - scaled.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities)
    cumulative = np.cumsum(probabilities[order])
    keep = order[: int(np.searchsorted(cumulative, top_p) + 1)]  # smallest set with mass >= top_p
    kept = probabilities[keep] / probabilities[keep].sum()
    return int(rng.choice(keep, p=kept))


def generate_ids(causal_lm, prompt_ids: list[int], max_new_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, stop_ids: tuple[int, ...] = ()) -> list[int]:
    """New token ids after `prompt_ids` (the stop token itself excluded), with the KV cache."""
    if not prompt_ids:
        raise ValueError("the prompt is empty")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    scorer = _scorer_for(causal_lm)
    rng = np.random.default_rng(seed)
    length = len(prompt_ids)
    cache_length = length + max_new_tokens
    key_mask = np.ones((1, cache_length), dtype=np.int32)  # (batch, cache_length)
    cache = scorer.empty_cache(1, cache_length)
    logits, cache = scorer(np.array([prompt_ids], dtype=np.int32), cache, 0, key_mask)  # (1, vocab)
    generated = []
    for step in range(max_new_tokens):
        token = choose_token(logits[0], temperature, top_p, rng)
        if token in stop_ids:
            break
        generated.append(token)
        if step + 1 < max_new_tokens:
            logits, cache = scorer(np.array([[token]], dtype=np.int32), cache, length + step, key_mask)
    return generated


def generate(causal_lm, tokenizer: ChatTokenizer, prompt_text: str, max_new_tokens: int = 64,
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> str:
    """Continue `prompt_text` (already in the chat format); greedy by default, stops at <|im_end|>."""
    ids = generate_ids(causal_lm, tokenizer.encode(prompt_text), max_new_tokens, temperature, top_p, seed,
                       stop_ids=(tokenizer.im_end_id, tokenizer.end_of_text_id))
    return tokenizer.decode(ids)


def respond(causal_lm, tokenizer: ChatTokenizer, user_message: str, system: str | None = None, **options) -> str:
    """The assistant's reply to one user message, in the model's chat template."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_message}]
    return generate(causal_lm, tokenizer, apply_chat_template(tokenizer, messages), **options)

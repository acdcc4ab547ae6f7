"""Prompt templates: every task is instruction -> answer text in the base model's chat format.

The chat format is ChatML, which SmolLM2-Instruct uses (and the tiny smoke model shares):

    <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{instruction}\n\n{text}<|im_end|>\n
    <|im_start|>assistant\n{answer}<|im_end|>

The loss is on the answer tokens (and the closing <|im_end|>) only. k-shot prompts put solved
examples as earlier user/assistant turns, so the model sees the answer format it must produce.
"""

from __future__ import annotations

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END]
# SmolLM2's chat template adds this system message when none is given (used by `generate`).
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# Task prompts use a shorter one: every prompt token costs training and evaluation time.
TASK_SYSTEM = "You are a precise banking assistant."

TASK_INSTRUCTIONS = {
    "intent": "Classify the intent of this customer banking query. Answer with the intent label only.",
    "transaction_category": "Classify this card or bank statement line into a spending category. "
                            "Answer with the category label only.",
    "ticket_product": "Which banking product is this support ticket about? Answer with the product label only.",
    "ticket_priority": "How urgent is this support ticket (low, medium, high or urgent)? "
                       "Answer with the priority label only.",
    "ticket_reply": "Write the bank agent's reply to this support ticket.",
}


def instruction_for(task: str) -> str:
    # A user's own label task reuses the generic wording.
    return TASK_INSTRUCTIONS.get(task, f"Classify this text ({task}). Answer with the label only.")


def _turn(role: str, content: str) -> str:
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def format_prompt(task: str, text: str, shots: list[tuple[str, str]] = (), system: str = TASK_SYSTEM) -> str:
    """The prompt up to and including the assistant header; the answer follows it."""
    parts = [_turn("system", system)]
    for shot_text, shot_answer in shots:
        parts.append(_turn("user", f"{instruction_for(task)}\n\n{shot_text}"))
        parts.append(_turn("assistant", shot_answer))
    parts.append(_turn("user", f"{instruction_for(task)}\n\n{text}"))
    parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


def format_answer(answer: str) -> str:
    """The answer text the model is trained to produce, closed by the end-of-turn token."""
    return f"{answer}{IM_END}"


def label_answer(label: str) -> str:
    """A label as the model answers it: its underscores written as spaces ("card_arrival" -> "card arrival").

    Words tokenise short in a pretrained vocabulary and read as the language the model already knows:
    BANKING77's 77 labels take 4.6 tokens each with <|im_end|> instead of 7.2, and their scoring tree
    228 nodes instead of 382. Only the answer text changes: predictions, reports and serving name labels as
    written.
    """
    return label.replace("_", " ")


def answer_text(task: str, target: str) -> str:
    """The answer a row is trained on: a label task's label as `label_answer` writes it, else the text itself."""
    from schemas.examples import LABEL_TASKS

    return label_answer(target) if task in LABEL_TASKS else target


def encode_prompt(tokenizer, task: str, text: str, max_prompt_tokens: int,
                  shots: list[tuple[str, str]] = ()) -> tuple[list[int], bool]:
    """Token ids of the prompt, and whether the input text had to be cut to fit.

    Documented truncation rule: the template around the text is kept whole and the *end* of the
    input text is cut, because banking queries and tickets state their point first.
    """
    full = format_prompt(task, text, shots)
    ids = tokenizer.encode(full)
    if len(ids) <= max_prompt_tokens:
        return ids, False
    head, tail = full.split(text, 1) if text else (full, "")
    head_ids, tail_ids = tokenizer.encode(head), tokenizer.encode(tail)
    budget = max_prompt_tokens - len(head_ids) - len(tail_ids)
    if budget <= 0:
        raise ValueError(f"max_prompt_tokens={max_prompt_tokens} cannot hold the prompt template")
    return head_ids + tokenizer.encode(text)[:budget] + tail_ids, True

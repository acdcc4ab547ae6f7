"""The tokenizer every component shares: a Hugging Face `tokenizers` byte-level BPE.

It is stored as a plain `tokenizer.json` (plus `tokenizer_config.json` with the chat template and
special tokens), so the exported bundles carry the same file that any other runtime can read.
The smoke profile trains a small byte-level BPE on a fixed simulated corpus; the real model's
tokenizer comes from its GGUF.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from models.llm.prompts import END_OF_TEXT, IM_END, IM_START, SPECIAL_TOKENS
from schemas.artifacts import ModelFiles


class ChatTokenizer:
    """Text <-> token ids, with ChatML special tokens recognised inside the text."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str = ""):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}")
        self.im_start_id = tokenizer.token_to_id(IM_START)
        self.im_end_id = tokenizer.token_to_id(IM_END)
        self.end_of_text_id = tokenizer.token_to_id(END_OF_TEXT)
        # Pad with <|endoftext|>: padded positions are masked out of attention and loss anyway.
        self.pad_id = self.end_of_text_id

    @property
    def vocabulary_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def save(self, directory: Path) -> None:
        files = ModelFiles(directory)
        files.folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(files.tokenizer_file))
        files.tokenizer_config_file.write_text(json.dumps({
            "chat_template": self.chat_template,
            "special_tokens": SPECIAL_TOKENS,
            "pad_token": END_OF_TEXT,
            "eos_token": IM_END,
        }, indent=2))

    @classmethod
    def load(cls, directory: Path) -> ChatTokenizer:
        files = ModelFiles(directory)
        config = json.loads(files.tokenizer_config_file.read_text()) if files.tokenizer_config_file.exists() else {}
        return cls(Tokenizer.from_file(str(files.tokenizer_file)), config.get("chat_template", ""))


def train_byte_level_bpe(texts: list[str], vocabulary_size: int) -> ChatTokenizer:
    """A small byte-level BPE (GPT-2 style pre-tokenisation) with the ChatML special tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocabulary_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return ChatTokenizer(tokenizer)

"""`ChatTokenizer` as TensorFlow ops: text -> ids and ids -> text inside a SavedModel graph.

Serving signatures take strings, so the byte-level BPE must run in the graph and give exactly the
ids of `ChatTokenizer.encode` (Hugging Face `tokenizers`). The parts:

1. Added tokens (<|im_start|> ...) split the text first, leftmost-longest, as Hugging Face does;
   the pieces between them are pre-tokenised and BPE-encoded on their own.
2. Pre-tokenisation: GPT-2's regex, after isolating every digit for SmolLM2's `Digits` step. This
   part is hand-written because GPT-2's regex needs a lookahead (`\\s+(?!\\S)`) that RE2 lacks, and
   keras-hub's RE2 stand-in for it marks split points with a "६" character that it then deletes
   from the text (so "a६b" loses a letter), and it has no digit step. Here the lookahead is
   replaced by cutting the text before every whitespace character that is followed by a
   non-space; the regex without the lookahead then gives Hugging Face's pieces exactly.
3. BPE merges and the vocabulary: keras-hub's `BytePairTokenizer` (its byte table, merge loop and
   lookup tables), without its word cache, so a serving signature keeps no state between calls.
4. Decoding: one byte string per id (what `tokenizers`' ByteLevel decoder gives; special tokens
   empty, as with `skip_special_tokens=True`), joined, then invalid UTF-8 replaced by U+FFFD.

The graph needs only `tensorflow` and `tensorflow_text` (for `regex_split`) to run.
"""

from __future__ import annotations

import json

import tensorflow as tf
import tensorflow_text as tf_text

from models.llm.tokenizer import ChatTokenizer

# Oniguruma's Unicode `\s` (the White_Space property), which Hugging Face's GPT-2 regex uses; RE2's `\s`
# is ASCII only.
WHITESPACE = r"\t-\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}"
# GPT-2's pre-tokeniser regex with its two whitespace alternatives (`\s+(?!\S)|\s+`) as one `\s+`:
# equal once the text is cut as `_encode_plain` does (a whitespace run then never precedes a non-space).
WORD_PATTERN = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+"
                rf"| ?[^{WHITESPACE}\p{{L}}\p{{N}}]+|[{WHITESPACE}]+")


def _regex_literal(text: str) -> str:
    """`text` as an RE2 pattern that matches it literally."""
    return "".join(c if c.isalnum() and c.isascii() else f"\\x{{{ord(c):x}}}" for c in text)


def regex_split(texts, pattern: str):
    """(batch, pieces) ragged: `tf_text.regex_split` keeping the matches, safe for NUL characters.

    `regex_split` stops reading a string at a NUL byte, so it splits a copy with NUL -> U+0001 (same
    length, same regex classes) and the pieces are cut from the original at its byte offsets.
    """
    _, begin, end = tf_text.regex_split_with_offsets(tf.strings.regex_replace(texts, r"\x00", "\x01"),
                                                     pattern, pattern)
    source = tf.gather(texts, begin.value_rowids())
    return begin.with_flat_values(tf.strings.substr(source, begin.flat_values, end.flat_values - begin.flat_values))


def pre_tokenizer_kind(spec: dict | None) -> str:
    """'gpt2' (ByteLevel with GPT-2's regex) or 'smollm' (Digits(individual) then that); others refused."""
    spec = spec or {}

    def byte_level(step):
        return step.get("type") == "ByteLevel" and step.get("use_regex", True) and not step.get("add_prefix_space")

    if byte_level(spec):
        return "gpt2"
    steps = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else []
    if len(steps) == 2 and steps[0] == {"type": "Digits", "individual_digits": True} and byte_level(steps[1]):
        return "smollm"
    raise NotImplementedError(
        f"in-graph tokenisation supports GPT-2 and SmolLM2 byte-level pre-tokenisers, not {json.dumps(spec)} "
        "(e.g. the llama3 split); export without the string signatures for this tokenizer")


def _byte_decoder() -> dict[str, int]:
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    byte_list, unicode_list = bytes_to_unicode()
    return {char: byte[0] for byte, char in zip(byte_list, unicode_list)}


def decoded_bytes(token: str | None, decoder: dict[str, int]) -> bytes:
    """What `tokenizers`' ByteLevel decoder makes of one token: its bytes, or its UTF-8 when not byte-level."""
    if token is None:
        return b""
    if all(c in decoder for c in token):
        return bytes(decoder[c] for c in token)
    return token.encode("utf-8")


class GraphTokenizer(tf.Module):
    """In-graph `encode` (strings [batch] -> ragged int32 ids) and `decode` (ids [n] -> string)."""

    def __init__(self, tokenizer: ChatTokenizer):
        from keras_hub.tokenizers import BytePairTokenizer

        super().__init__(name="graph_tokenizer")
        spec = json.loads(tokenizer.tokenizer.to_str())
        if spec.get("normalizer") is not None or spec["model"].get("type") != "BPE" or \
                (spec.get("decoder") or {}).get("type") != "ByteLevel":
            raise NotImplementedError("in-graph tokenisation supports byte-level BPE (ByteLevel decoder) "
                                      "without a normalizer")
        self.individual_digits = pre_tokenizer_kind(spec.get("pre_tokenizer")) == "smollm"
        merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
        self._bpe = BytePairTokenizer(vocabulary=spec["model"]["vocab"], merges=merges, dtype="int32",
                                      _allow_python_workflow=False)
        added = tokenizer.tokenizer.get_added_tokens_decoder()  # {id: AddedToken}
        for token in added.values():
            if token.lstrip or token.rstrip or token.single_word:
                raise NotImplementedError(f"added token {token.content!r} has matching options "
                                          "(lstrip/rstrip/single_word) the graph does not reproduce")
        contents = sorted((t.content for t in added.values()), key=len, reverse=True)  # longest wins at a position
        self._added_pattern = "|".join(_regex_literal(c) for c in contents)
        self._added_ids = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            [t.content for t in added.values()], tf.constant(list(added), tf.int32)), default_value=-1)
        decoder = _byte_decoder()
        skipped = {i for i, t in added.items() if t.special}
        self._token_bytes = tf.constant([b"" if i in skipped else decoded_bytes(tokenizer.tokenizer.id_to_token(i),
                                                                                  decoder)
                                         for i in range(tokenizer.vocabulary_size)])
        # Traced once and called from every signature (tracing the ragged ops is what costs time).
        self.encode = tf.function(self._encode, input_signature=[tf.TensorSpec([None], tf.string)])
        self.decode = tf.function(self._decode, input_signature=[tf.TensorSpec([None], tf.int32)])

    def _encode(self, texts):
        """Token ids of each text, (batch, None) ragged int32; invalid UTF-8 is read as U+FFFD first."""
        texts = tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace")
        segments = regex_split(texts, self._added_pattern)  # (batch, segments)
        flat = segments.flat_values
        added = self._added_ids.lookup(flat)  # (segments,), -1 for plain text
        is_added = added >= 0
        text_ids = self._encode_plain(tf.where(is_added, "", flat))  # (segments, None)
        added_ids = tf.RaggedTensor.from_row_lengths(tf.boolean_mask(added, is_added), tf.cast(is_added, tf.int64))
        return segments.with_flat_values(tf.concat([added_ids, text_ids], axis=1)).merge_dims(1, 2)

    def _encode_plain(self, segments):
        """(segments, None) ids of text without added tokens: cut into pieces, words, then BPE."""
        chars = tf.strings.unicode_split(segments, "UTF-8")  # (segments, chars)
        flat, rows = chars.flat_values, chars.value_rowids()
        index = tf.range(tf.shape(flat, out_type=tf.int64)[0])
        first = tf.equal(index, tf.gather(chars.row_starts(), rows))
        last = tf.equal(index, tf.gather(chars.row_limits(), rows) - 1)
        is_space = tf.strings.regex_full_match(flat, f"[{WHITESPACE}]")
        # GPT-2's `\s+(?!\S)`: a whitespace run followed by a non-space gives up its last character.
        before_word = is_space & ~last & ~tf.roll(is_space, -1, 0)
        cut = first | before_word
        if self.individual_digits:  # SmolLM2's Digits step: each digit alone, and the text around it apart
            is_digit = tf.strings.regex_full_match(flat, r"\p{N}")
            next_digit = tf.roll(is_digit, -1, 0) & ~last
            cut = first | is_digit | (tf.roll(is_digit, 1, 0) & ~first) | (before_word & ~next_digit)
        piece_of_char = tf.cumsum(tf.cast(cut, tf.int64)) - 1
        num_pieces = tf.reduce_sum(tf.cast(cut, tf.int64))
        pieces = tf.strings.unsorted_segment_join(flat, piece_of_char, num_pieces)  # (pieces,)
        words = regex_split(pieces, WORD_PATTERN)  # (pieces, words)
        ids = self._bpe_ids(words.flat_values)  # (words, tokens)
        piece_rows = tf.boolean_mask(rows, cut)
        segment_splits = tf.RaggedTensor.from_value_rowids(
            piece_rows, piece_rows, nrows=tf.shape(segments, out_type=tf.int64)[0]).row_splits
        nested = tf.RaggedTensor.from_nested_row_splits(ids.flat_values,
                                                        [segment_splits, words.row_splits, ids.row_splits])
        return nested.merge_dims(1, 3)

    def _bpe_ids(self, words):
        """(words, tokens) ids of pre-tokenised words, via keras-hub's byte table, merge loop and vocabulary."""
        bpe = self._bpe
        symbols = bpe.byte2unicode.lookup(tf.strings.bytes_split(words))  # (words, bytes) in GPT-2's alphabet
        return tf.cast(bpe.token_to_id_map.lookup(bpe._bpe_merge_tf(symbols)), tf.int32)

    def _decode(self, ids):
        """The text of token ids (n,), special tokens skipped, like `ChatTokenizer.decode`."""
        raw = tf.strings.reduce_join(tf.gather(self._token_bytes, ids))
        return tf.strings.unicode_transcode(raw, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD)

"""The language-model code the components share, by concern: `llm` (base model, import, tokenizer,
prompts, TFRecord format), `scoring` (label-constrained scoring), `export` (SavedModel/TFLite and
what runs them), `student` (the distilled on-device student); `files` holds file hashing/sizes.

Never imports `components`, `serving` or `pipeline` (tests/test_import_layers.py).
"""

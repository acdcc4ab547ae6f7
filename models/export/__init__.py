"""Export of a fine-tuned model: fixed-shape SavedModel signatures, string signatures with in-graph
tokenisation, the flat KV-cache decoder, TFLite conversion (in a child process), calibration data for
full int8, and `ExportedModel`, which runs what was exported.

May import: `models.llm`, `models.scoring`, `models.files`, `schemas`. Never `components`.
"""

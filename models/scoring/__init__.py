"""Label-constrained scoring: label prefix trees flattened into one pass with tree attention, exact
label probabilities, top-k, and the exhaustive reference scorer the tests compare against.

May import: `models.llm`, `models.files`. Never `components`.
"""

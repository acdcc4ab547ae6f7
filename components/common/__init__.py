"""The layer below the components: code that more than one component needs — text cleaning and
PII masking (ExampleGen, Transform, the Evaluator's reports, the server's logs) and label metrics
(Evaluator, Trainer validation, Optimizer, Benchmark).

May import: `models`, `schemas`, `data`. Never a component package (`components/<name>/`).
"""

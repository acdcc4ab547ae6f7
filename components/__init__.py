"""The pipeline's components (one package each, `components/<name>/component.py`), the framework
they run in (`base`: the contract; `runner`: ordering, fingerprints, cache; `config`: profiles and
`--set`) and `common`, the code several components share. A component reads another's work only
through its artifacts (tests/test_import_layers.py).
"""

"""Data and artifact schemas: what a valid example table or metrics file is.

`schemas.examples` describes the examples table shared by ExampleGen, Transform and the
Trainer, and validates it row by row (`validate_examples`).
`schemas.artifacts` names the files inside every artifact folder (`DatasetsFiles(path).labels()`, ...).
"""

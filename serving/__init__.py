"""A TF-Serving-compatible REST server for fintune's exported bundles (`python pipeline.py serve`).

`app.build_app(config)` is the ASGI app; `versions` finds and loads model versions under the base
path, `backends` runs a SavedModel or a TFLite bundle, `batching` groups concurrent requests.
"""

"""The base language model: Keras/keras-hub backbone and LoRA, GGUF and Hugging Face import (one
cache), the tokenizer and chat template, prompt formats, and the TFRecord format and tf.data loader.

May import: `models.files`, `schemas`. Never `components` or another `models` package.
"""

"""The distilled on-device student: a small tf-keras decoder with an answer-vocabulary head, its
distillation targets and losses, and TF-MOT pruning, quantisation-aware training and int8 conversion.

May import: `models.llm`, `models.scoring`, `models.export`, `models.files`. Never `components`.
"""

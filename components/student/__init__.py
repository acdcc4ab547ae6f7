"""The student component: the fine-tuned model distilled, pruned, QAT-trained and converted to a
full-integer int8 TFLite classifier (settings, plan, stage, component).

May import: `components.common`, the framework modules, `models`, `schemas`. Never another component.
"""

"""Parameters, profiles and overrides.

Each component's parameters are a dataclass whose fields are declared with `param(default, doc)`.
A profile is a dict of per-component overrides; a YAML config file and `--set section.key=value`
flags are applied on top, each value typed by the dataclass field it sets. Nothing else maps onto
parameters.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from components.base import UsageError

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # A tiny random Llama-style model and a few hundred rows: every component runs for real in minutes.
    "smoke": {
        "example_gen": {"num_records": 300},
        "base_model": {"source": "tiny-random"},
        "trainer": {"steps": 30, "batch_size": 8, "learning_rate": 3e-3, "lora_rank": 4, "validate_every": 10,
                    "validation_label_examples": 16},
        "evaluator": {"max_examples": 48},
        "optimizer": {"variants": ["float32", "dynamic_int8", "keras_int8"]},
        # a 1-block student through distillation, pruning, QAT and int8, in about a minute
        "student": {"num_layers": 1, "hidden_dim": 32, "num_heads": 2, "mlp_dim": 64, "steps": 12, "batch_size": 8,
                    "alphas": [0.5, 0.9], "temperatures": [2.0], "pruning_steps": 20, "pruning_frequency": 5,
                    "qat_steps": 4, "calibration_examples": 16, "selection_examples": 1,
                    "validation_batches": 2, "latency_runs": 2},
        "benchmark": {"repeats": 5, "max_examples": 16},
    },
    # What `python pipeline.py run` does: SmolLM2-135M-Instruct on the simulated data set, sized for
    # 2 CPU cores (see README for the measured wall time of each component).
    "default": {
        "example_gen": {"num_records": 6000},
        "base_model": {"source": "smollm2"},
        "transform": {"max_prompt_tokens": 192, "max_answer_tokens": 64},
        "trainer": {"steps": 150, "batch_size": 16, "learning_rate": 1e-3, "lora_rank": 16, "lora_alpha": 32.0,
                    "validate_every": 75, "validation_label_examples": 48, "precision": "mixed_bfloat16"},
        # Perplexity on 12 batches of 8 (~1,100 answer tokens): 2.7 s a batch per model, measured.
        "evaluator": {"max_examples": 100, "perplexity_batches": 12, "unconstrained_examples": 8},
        # dynamic_int8 is what ships. float32 TFLite (652 MB; 2 min to convert, ~1 min to check, README) and
        # float16 (no faster than float32 on CPU) are opt-in: --set optimizer.variants=float32,dynamic_int8.
        # The SavedModel's classify signature proves the export reproduces Keras in every run.
        "optimizer": {"variants": ["dynamic_int8"], "verify_prompts": 10, "eval_examples": 50,
                      "float32_eval_examples": 10},
        # One candidate (alpha 0.5 won over 0.9 by 8 macro-F1 points in the two-candidate study, README) on 100
        # teacher batches: ~10 min (README). Measured: 300 steps on 60 batches reached macro-F1 0.41 (gate: no).
        "student": {"steps": 1000, "alphas": [0.5], "select_on": "answer_loss", "selection_examples": 0,
                    "validation_batches": 5, "teacher_batches": 100, "pruning_steps": 100, "qat_steps": 50,
                    "eval_examples": 50},
        "benchmark": {"repeats": 1, "max_examples": 8, "warmup": 1},
    },
}


def param(default: Any = dataclasses.MISSING, doc: str = "", **kwargs) -> Any:
    """A dataclass field with a one-line doc, shown by `pipeline.py components`."""
    if isinstance(default, (list, dict, set)):  # each instance gets a copy
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={"doc": doc}, **kwargs)
    return dataclasses.field(default=default, metadata={"doc": doc}, **kwargs)


def _field_type(params_cls: type, name: str) -> Any:
    hints = typing.get_type_hints(params_cls)
    return hints[name]


def coerce_value(raw: Any, annotation: Any, key: str) -> Any:
    """Convert `raw` (a string from --set, or a YAML value) to the field's annotated type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
        return coerce_value(raw, options[0], key)
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(annotation) or (str,)
        items = raw if isinstance(raw, (list, tuple)) else [s for s in str(raw).split(",") if s.strip()]
        return origin(coerce_value(item.strip() if isinstance(item, str) else item, item_type, key)
                      for item in items)
    try:
        if annotation is bool:
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if annotation is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(str(raw).strip()) if isinstance(raw, str) else int(raw)
        if annotation is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if annotation is str:
            return str(raw)
        if annotation is Path:
            return str(raw)
    except (TypeError, ValueError):
        name = getattr(annotation, "__name__", str(annotation))
        raise UsageError(f"--set {key}: expected {name}, got {raw!r}") from None
    return raw


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"config file {path} is not valid YAML{where}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UsageError(f"config file {path} must map component names to {{parameter: value}} sections")
    return data


def parse_set_flags(flags: list[str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for flag in flags:
        key, sep, value = flag.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise UsageError(f"--set {flag!r}: expected section.key=value, e.g. trainer.steps=100")
        overrides.setdefault(section, {})[name] = value
    return overrides


def build_params(params_classes: dict[str, type | None], profile: str, config_file: str | None = None,
                 set_flags: list[str] | tuple = ()) -> tuple[dict[str, Any], dict[str, dict]]:
    """Parameters per component: dataclass defaults < profile < config file < --set flags.

    Returns (params objects by component, the plain-dict config that produced them).
    """
    if profile not in PROFILES:
        raise UsageError(f"unknown profile '{profile}'; choose from: {', '.join(PROFILES)}")
    layers = [PROFILES[profile]]
    if config_file:
        layers.append(load_config_file(config_file))
    layers.append(parse_set_flags(list(set_flags)))
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, values in layer.items():
            if section not in params_classes:
                raise UsageError(f"unknown section '{section}'; sections are: {', '.join(params_classes)}")
            for name, value in _flat(values):
                _set_value(merged.setdefault(section, {}), params_classes[section], name, value, section)
    params = {}
    for section, params_cls in params_classes.items():
        if params_cls is None:
            params[section] = None
            continue
        try:
            params[section] = _construct(params_cls, merged.get(section, {}))
        except (ValueError, TypeError) as error:
            raise UsageError(f"{section}: {error}") from None
    return params, merged


def _flat(values: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """("a.b", value) pairs of a YAML section; a nested mapping names no parameter and is refused by `_set_value`."""
    pairs = []
    for name, value in values.items():
        if isinstance(value, dict):
            pairs.extend(_flat(value, f"{prefix}{name}."))
        else:
            pairs.append((f"{prefix}{name}", value))
    return pairs


def _set_value(target: dict, params_cls: type | None, name: str, value: Any, key: str) -> None:
    """Coerce `value` by the type of the parameter `name`; a dotted name ("a.b") is no parameter."""
    head, _, rest = name.partition(".")
    known = {f.name for f in dataclasses.fields(params_cls)} if params_cls else set()
    if head not in known:
        hint = f"; {key} has: {', '.join(sorted(known))}" if known else ""
        raise UsageError(f"unknown parameter '{key}.{head}'{hint}")
    if rest:
        raise UsageError(f"unknown parameter '{key}.{name}': {head} has no fields")
    target[head] = coerce_value(value, _field_type(params_cls, head), f"{key}.{head}")


def _construct(params_cls: type, values: dict) -> Any:
    """The params dataclass from merged values (its __post_init__ checks them)."""
    return params_cls(**values)

"""The compression gate: a variant ships only if its macro-F1 stays within its kind's budget.

Budgets are in macro-F1 *points* (0-100) below the float fine-tuned model, per kind of variant,
e.g. {"ptq": 2.0, "student": 5.0}: post-training quantisation of the same model must stay close,
a distilled student may lose more in exchange for being far smaller.
"""

from __future__ import annotations

import math

DEFAULT_BUDGETS = {"ptq": 2.0, "student": 5.0}


def compression_gate(variants: list[dict], baseline_macro_f1: float, budgets: dict[str, float]) -> list[dict]:
    """One verdict per variant: {name, kind, macro_f1, drop_points, allowed_points, eligible, reason}.

    `variants`: dicts with "name", "kind" (a key of `budgets`) and "macro_f1" (0-1, like the
    Evaluator's). A variant is eligible when (baseline - macro_f1) * 100 <= its kind's budget.
    A kind without a budget or a missing baseline is a configuration error (ValueError), raised
    before any verdict; a variant whose macro-F1 is missing or NaN is not eligible.
    """
    if baseline_macro_f1 is None or not math.isfinite(baseline_macro_f1):
        raise ValueError(f"the float model's macro-F1 is {baseline_macro_f1}; the gate needs a measured baseline")
    bad = {kind: budget for kind, budget in budgets.items() if not budget >= 0}
    if bad:
        raise ValueError(f"macro-F1 budgets must be >= 0 points, got {bad}")
    unknown = sorted({v["kind"] for v in variants} - set(budgets))
    if unknown:
        raise ValueError(f"no macro-F1 budget for variant kinds {unknown}; configured: {sorted(budgets)}")
    verdicts = []
    for variant in variants:
        allowed = float(budgets[variant["kind"]])
        score = variant.get("macro_f1")
        if score is None or not math.isfinite(score):
            drop, eligible, reason = None, False, "no macro-F1 measured"
        else:
            drop = round((baseline_macro_f1 - score) * 100.0, 6)  # rounding: 0.80 - 0.78 is 2.0000000000000018
            eligible = drop <= allowed
            verdict = "within" if eligible else "over"
            reason = (f"macro-F1 {score * 100:.1f} vs {baseline_macro_f1 * 100:.1f} for the float model: a drop of "
                      f"{drop:.1f} points, {verdict} the {variant['kind']} budget of {allowed:g}")
        verdicts.append({"name": variant["name"], "kind": variant["kind"], "macro_f1": score, "drop_points": drop,
                         "allowed_points": allowed, "eligible": eligible, "reason": reason})
    return verdicts

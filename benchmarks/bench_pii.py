"""Benchmark of PII masking: recall, look-alike precision, idempotence and speed (not a test).

    python benchmarks/bench_pii.py [--pii 6000] [--lookalikes 3000] [--seed 0] [--baseline-rev REV]

On a generated corpus (`data/pii_corpus.py`: every kind of PII in every format inside statement
lines and ticket texts, and look-alikes that must survive), each masker is run as ExampleGen runs
it, `mask_pii(clean_text(text))`:

- recall per kind: the PII's letters and digits are gone from the output and its placeholder is there;
- look-alikes kept: the output equals the cleaned input;
- idempotence: masking the output again changes nothing;
- rows/s of the corpus, and of ExampleGen's `clean_and_mask` on 20,000 simulated records.

`--baseline-rev` (default: the commit before the current masker) loads the masker of that git
revision (`components/transform/pii.py`, its place then) and measures it on the same rows in the
same process, so the figures stand side by side. Results go to stdout and runs/bench/bench_pii.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.common import pii  # noqa: E402
from components.common.text_cleaning import clean_text  # noqa: E402
from components.example_gen import component as example_gen  # noqa: E402
from data.pii_corpus import KINDS, corpus, survives  # noqa: E402
from data.simulated import generate_examples  # noqa: E402

DEFAULT_BASELINE_REV = "d7a0cf2"  # main before the detection-view masker (issue 19)
BASELINE_PATH = "components/transform/pii.py"  # where the masker lived at that revision
DEFAULT_OUTPUT = ROOT / "runs" / "bench" / "bench_pii.json"


def load_masker_at(rev: str):
    """The pii module of a git revision, imported under another name; None when git cannot give it."""
    try:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{BASELINE_PATH}"],
                                check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp(prefix="bench-pii-")) / "pii_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("pii_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quality(mask, cases) -> dict:
    masked_kinds, totals, kept, lookalikes, not_idempotent, leaks = Counter(), Counter(), 0, 0, 0, []
    for case in cases:
        cleaned = clean_text(case.text)
        masked, _ = mask(cleaned)
        not_idempotent += mask(masked)[0] != masked
        if case.kind == "LOOKALIKE":
            lookalikes += 1
            kept += masked == cleaned
            continue
        totals[case.kind] += 1
        if not survives(clean_text(case.secret), masked) and pii.PII_PLACEHOLDERS[case.kind] in masked:
            masked_kinds[case.kind] += 1
        elif len(leaks) < 5:
            leaks.append({"kind": case.kind, "text": case.text})
    pii_total = sum(totals.values())
    return {
        "recall": round(sum(masked_kinds.values()) / pii_total, 4),
        "leaked": pii_total - sum(masked_kinds.values()),
        "recall_by_kind": {k: round(masked_kinds[k] / totals[k], 4) for k in KINDS},
        "lookalikes_kept": round(kept / lookalikes, 4) if lookalikes else None,
        "lookalikes_over_masked": lookalikes - kept,
        "not_idempotent": not_idempotent,
        "leak_examples": leaks,
    }


def rows_per_s(function, items, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):  # best of three: the machine is shared
        started = time.perf_counter()
        function(items)
        best = min(best, time.perf_counter() - started)
    return round(len(items) / best, 1)


def measure(mask, cases, records) -> dict:
    texts = [case.text for case in cases]
    result = quality(mask, cases)
    result["corpus_rows_per_s"] = rows_per_s(lambda items: [mask(clean_text(t)) for t in items], texts)
    original = example_gen.mask_pii
    example_gen.mask_pii = mask  # ExampleGen's own clean_and_mask, with this masker inside
    try:
        result["example_gen_clean_and_mask_rows_per_s"] = rows_per_s(
            lambda frame: example_gen.clean_and_mask(frame), records)
    finally:
        example_gen.mask_pii = original
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pii", type=int, default=6000, help="PII cases (cycling through every kind)")
    parser.add_argument("--lookalikes", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--records", type=int, default=20_000, help="simulated records for ExampleGen's rows/s")
    parser.add_argument("--baseline-rev", default=DEFAULT_BASELINE_REV)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    cases = corpus(args.pii, args.lookalikes, args.seed)
    records = generate_examples(args.records, seed=0)
    results = {"cases": len(cases), "pii_cases": args.pii, "lookalikes": args.lookalikes, "seed": args.seed,
               "cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
               "maskers": {"current": measure(pii.mask_pii, cases, records)}}
    baseline = load_masker_at(args.baseline_rev)
    if baseline is None:
        print(f"(no baseline: git cannot show {BASELINE_PATH} at {args.baseline_rev})")
    else:
        results["maskers"][f"baseline {args.baseline_rev}"] = measure(baseline.mask_pii, cases, records)

    print(f"PII masking on {len(cases):,} generated cases ({args.pii:,} PII, {args.lookalikes:,} look-alikes, "
          f"seed {args.seed}); {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    print(f"{'masker':<18}{'recall':>8}{'leaked':>8}{'kept':>8}{'over':>6}{'non-idem':>9}{'rows/s':>9}"
          f"{'ExampleGen rows/s':>19}")
    for name, r in results["maskers"].items():
        print(f"{name:<18}{r['recall']:>8.2%}{r['leaked']:>8}{r['lookalikes_kept']:>8.2%}"
              f"{r['lookalikes_over_masked']:>6}{r['not_idempotent']:>9}{r['corpus_rows_per_s']:>9,.0f}"
              f"{r['example_gen_clean_and_mask_rows_per_s']:>19,.0f}")
    print("\nrecall by kind: " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v:.1%}" for k, v in r["recall_by_kind"].items())
        for name, r in results["maskers"].items()))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"\nresults written to {args.output}")


if __name__ == "__main__":
    main()

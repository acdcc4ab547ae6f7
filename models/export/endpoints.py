"""Names of the exported signatures and TFLite variants: a leaf module, so that conversion and
calibration (which conversion imports) can both name them without importing each other."""

ENDPOINT = "serve"
SCORE_ENDPOINT = "score_labels"
PREFILL_ENDPOINT, DECODE_ENDPOINT = "prefill", "decode"
ALL_ENDPOINTS = (ENDPOINT, SCORE_ENDPOINT, PREFILL_ENDPOINT, DECODE_ENDPOINT)
# `decode` for B sequences at once (`optimizer.decode_batch` rows), when the export is asked for it.
DECODE_BATCH_ENDPOINT = "decode_batch"
# full_int8 (int8 weights and activations, calibrated on Transform rows: `models.export.calibration`) is
# opt-in: no profile or OptimizerParams default lists it, and converting it needs calibration data.
FULL_INT8 = "full_int8"
# int4_blockwise (int4 weights in blocks of 32, dynamically quantised activations; ai-edge-quantizer's
# dynamic_wi4b32_afp32 recipe) is opt-in too: faster decoding, lower quality (README, "On-device speed").
INT4_BLOCKWISE = "int4_blockwise"
TFLITE_VARIANTS = ("float32", "float16", "dynamic_int8", FULL_INT8, INT4_BLOCKWISE)


def bucket_endpoint(signature: str, prompt_tokens: int) -> str:
    """The name of a shorter-prompt copy of `prefill` or `score_labels` (`optimizer.prompt_buckets`): the
    signature itself takes the longest prompt, `prefill_64` prompts of at most 64 tokens, in 64 positions' time."""
    return f"{signature}_{prompt_tokens}"


def prompt_buckets(prompt_tokens: int, buckets: int) -> tuple[int, ...]:
    """The shorter prompt lengths of `buckets` evenly spaced ones up to `prompt_tokens` (rounded up to 16)."""
    lengths = {min(prompt_tokens, -(-prompt_tokens * k // buckets // 16) * 16) for k in range(1, buckets)}
    return tuple(sorted(lengths - {prompt_tokens}))


def optional_endpoints(buckets: tuple[int, ...], decode_batch: int, labels: bool = True) -> tuple[str, ...]:
    """The signatures an export with these settings has besides ALL_ENDPOINTS (`labels`: it has `score_labels`)."""
    bases = (PREFILL_ENDPOINT, SCORE_ENDPOINT) if labels else (PREFILL_ENDPOINT,)
    return (tuple(bucket_endpoint(base, n) for base in bases for n in buckets)
            + ((DECODE_BATCH_ENDPOINT,) if decode_batch > 1 else ()))

"""Names of the exported signatures and TFLite variants: a leaf module, so that conversion and
calibration (which conversion imports) can both name them without importing each other."""

ENDPOINT = "serve"
SCORE_ENDPOINT = "score_labels"
PREFILL_ENDPOINT, DECODE_ENDPOINT = "prefill", "decode"
ALL_ENDPOINTS = (ENDPOINT, SCORE_ENDPOINT, PREFILL_ENDPOINT, DECODE_ENDPOINT)
# full_int8 (int8 weights and activations, calibrated on Transform rows: `models.export.calibration`) is
# opt-in: no profile or OptimizerParams default lists it, and converting it needs calibration data.
FULL_INT8 = "full_int8"
# int4_blockwise (int4 weights in blocks of 32, dynamically quantised activations; ai-edge-quantizer's
# dynamic_wi4b32_afp32 recipe) is opt-in too: faster decoding, lower quality (README, "On-device speed").
INT4_BLOCKWISE = "int4_blockwise"
TFLITE_VARIANTS = ("float32", "float16", "dynamic_int8", FULL_INT8, INT4_BLOCKWISE)

"""Request bodies: read (size-limited) JSON and turn TF Serving's and the convenience routes' forms into
checked arguments. Every problem is an `InvalidArgument` with a one-line message, before any model work."""

from __future__ import annotations

import json

from serving.backends import CLASSIFY, GENERATE
from serving.config import Limits
from serving.errors import InvalidArgument, ServingError


class PayloadTooLarge(ServingError):
    code = "INVALID_ARGUMENT"

    @property
    def status(self) -> int:
        return 413


async def read_json(request, limit: int) -> dict:
    """The body as a JSON object; larger than `limit` bytes -> 413, not JSON or not an object -> 400."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():  # a body without Content-Length is cut off at the limit too
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"the body is not valid JSON: {str(error).splitlines()[0]}") from None
    if not isinstance(value, dict):
        raise InvalidArgument("the body must be a JSON object")
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_texts(texts, limits: Limits, field: str = "text") -> list[str]:
    if not isinstance(texts, list) or not texts:
        raise InvalidArgument(f'"{field}" must be a non-empty list of strings')
    for text in texts:
        if not isinstance(text, str):
            raise InvalidArgument(f'"{field}" must hold strings, got {type(text).__name__}')
        if len(text) > limits.max_text_chars:
            raise InvalidArgument(f"a text has {len(text)} characters; the limit is {limits.max_text_chars}")
    return texts


def check_task(task, labels: dict) -> str:
    if task is None and len(labels) == 1:
        return next(iter(labels))
    if not isinstance(task, str) or task not in labels:
        shown = "missing" if task is None else repr(task) if isinstance(task, str) else type(task).__name__
        raise InvalidArgument(f"unknown task {shown}; known tasks: {', '.join(labels)}")
    return task


def check_max_new_tokens(value, limits: Limits, default: int = 32) -> int:
    value = default if value is None else value
    if not _is_int(value) or not 0 <= value <= limits.max_new_tokens:
        raise InvalidArgument(f'"max_new_tokens" must be an integer from 0 to {limits.max_new_tokens}')
    return value


def predict_columns(body: dict, signature: str, input_names: list[str]) -> tuple[dict, bool]:
    """({input: value}, row format?) from TF Serving's `instances` (rows) or `inputs` (columns) form."""
    if ("instances" in body) == ("inputs" in body):
        raise InvalidArgument('the body needs exactly one of "instances" (row format) or "inputs" (columnar format)')
    if "inputs" in body:
        inputs = body["inputs"]
        if not isinstance(inputs, dict):  # TF Serving's shorthand for a signature with one input
            if len(input_names) != 1:
                raise InvalidArgument(f'"inputs" must name the inputs of {signature}: {", ".join(input_names)}')
            inputs = {input_names[0]: inputs}
        unknown = sorted(set(inputs) - set(input_names))
        if unknown:
            raise InvalidArgument(f"{signature} has no input {unknown[0]!r} (its inputs: {', '.join(input_names)})")
        return inputs, False
    rows = body["instances"]
    if not isinstance(rows, list) or not rows:
        raise InvalidArgument('"instances" must be a non-empty list')
    if not all(isinstance(row, dict) for row in rows):
        if len(input_names) != 1:
            raise InvalidArgument(f"each instance must be an object with {', '.join(input_names)}")
        return {input_names[0]: rows}, True
    # Every missing input, sorted: the signature's own input order is not stable across processes.
    missing = sorted(name for name in input_names if any(name not in row for row in rows))
    if missing:
        raise InvalidArgument(f"every instance needs {', '.join(map(repr, missing))}")
    return {name: [row[name] for row in rows] for name in input_names}, True


def string_signature_args(signature: str, columns: dict, row_format: bool, labels: dict, limits: Limits):
    """(texts, key parameter) of a `classify` (task) or `generate` (max_new_tokens) call."""
    scalar = "task" if signature == CLASSIFY else "max_new_tokens"
    texts = check_texts(columns.get("text"), limits)
    value = columns.get(scalar)
    if row_format and value is not None:  # a scalar input: every instance must agree on it
        if any(v != value[0] for v in value):
            raise InvalidArgument(f"{scalar!r} is a scalar input of {signature}: every instance must have the same")
        value = value[0]
    if signature == CLASSIFY:
        return texts, check_task(value, labels)
    assert signature == GENERATE
    return texts, check_max_new_tokens(value, limits)


def convenience_args(body: dict, allowed: set[str], limits: Limits) -> tuple[list[str], bool]:
    """(texts, single?) of a raw-text body: {"text": "..."} or {"texts": [...]}, plus the route's own fields."""
    unknown = sorted(set(body) - allowed - {"text", "texts"})
    if unknown:
        raise InvalidArgument(f"unknown field {unknown[0]!r}; this route takes text or texts, and "
                              + ", ".join(sorted(allowed)))
    if ("text" in body) == ("texts" in body):
        raise InvalidArgument('the body needs exactly one of "text" (a string) or "texts" (a list of strings)')
    if "text" in body:
        if not isinstance(body["text"], str):
            raise InvalidArgument('"text" must be a string')
        return check_texts([body["text"]], limits), True
    return check_texts(body["texts"], limits, "texts"), False

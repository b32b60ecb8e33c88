"""The one check of a caller's face box [x, y, w, h], wherever boxes come in: HTTP bodies, queries and
forms (serving/schemas.py BoxIn), a labeling listing's `boxes` cells (label_inputs.parse_boxes) and
the Python API (Predictor.predict's `boxes`). All of them refuse the same values the same way.

A box value is a real number: a Python int or float, or a numpy integer or floating scalar. Refused:
strings ("1"), booleans (True is an int to Python, never a coordinate), NaN and infinities, and any
magnitude over MAX_BOX_VALUE (a 5,000-digit integer is refused by comparison, before a float
conversion could overflow). Width and height must be positive.

Torch-free and pydantic-free, so the Serve ingress and the listing import it alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from numbers import Integral, Real
from typing import Any

import numpy as np

from emokp_ray.errors import UserError
from emokp_ray.inference.results import Box

# px. Pillow refuses images over 89,478,485 pixels in all, so no image side is longer than this: a
# larger coordinate cannot describe a box on any image we decode.
MAX_BOX_VALUE = 100_000_000
MAX_QUOTED_CHARS = 40  # of a bad value's repr in a message
# Digits of a JSON integer: more than any field takes (box values stop at 9 digits). Past it a number
# is refused from its text, before Python converts it (converting is quadratic in the digits; 3.11+
# raises a bare ValueError past 4,300 digits).
MAX_JSON_INT_DIGITS = 20


class BoxError(UserError, ValueError):
    """A box that is not [x, y, w, h] of 4 finite numbers within +-MAX_BOX_VALUE, w and h > 0.
    A ValueError too, so pydantic validators and the listing's row check take it as a bad value."""


def short_repr(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """repr(value), cut to `limit` characters (with its full length) so a message never echoes a
    client's megabyte; a huge int is not turned into digits at all (that alone costs quadratic time)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * math.log10(2)):,} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _number(value: object, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (Real, np.integer, np.floating)):
        raise BoxError(f"box {name} must be a number, got {type(value).__name__} {short_repr(value)}")
    if isinstance(value, Integral):
        if not -MAX_BOX_VALUE <= int(value) <= MAX_BOX_VALUE:  # compared as ints: no overflow
            raise BoxError(f"box {name} {short_repr(value)} is out of range (at most {MAX_BOX_VALUE:,} in size)")
        return float(value)
    number = float(value)
    if not math.isfinite(number):
        raise BoxError(f"box {name} must be a finite number, got {number}")
    if abs(number) > MAX_BOX_VALUE:
        raise BoxError(f"box {name} {number:g} is out of range (at most {MAX_BOX_VALUE:,} in size)")
    return number


# Every digit -> "0", then one substring search for MAX_JSON_INT_DIGITS + 1 zeros: a linear C pass
# (~3% of the parse of a 10 MB body of integers; a regex took ~30%).
_DIGITS_TO_ZERO = str.maketrans("123456789", "0" * 9)
_DIGITS_TO_ZERO_BYTES = bytes.maketrans(b"123456789", b"0" * 9)
_LONG_RUN = "0" * (MAX_JSON_INT_DIGITS + 1)


def _has_long_digit_run(text: str | bytes) -> bool:
    if isinstance(text, bytes):
        return _LONG_RUN.encode() in text.translate(_DIGITS_TO_ZERO_BYTES)
    return _LONG_RUN in text.translate(_DIGITS_TO_ZERO)


class JsonNumberError(ValueError):
    """A number that JSON from a client may not hold here: NaN or Infinity (not JSON at all, though
    Python's parser takes them), or an integer of more than MAX_JSON_INT_DIGITS digits."""


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise JsonNumberError(f"a number of {len(text.lstrip('-')):,} digits (at most {MAX_JSON_INT_DIGITS})")
    return int(text)


def _no_constant(name: str) -> float:
    raise JsonNumberError(f"{name} is not a JSON number")


def load_json(text: str | bytes) -> Any:
    """json.loads for client JSON (HTTP bodies, query and form `boxes`, listing cells): NaN, Infinity
    and integers over MAX_JSON_INT_DIGITS digits raise JsonNumberError (a ValueError) instead of
    becoming values; malformed text raises json.JSONDecodeError as usual. A float too large for a
    double (1e400) parses as inf, which check_box refuses."""
    # The integer hook costs a Python call per integer (900,000 boxes: 2x the parse time), so it is
    # used only where a run of that many digits occurs at all (strings included: then the hook
    # decides, exactly).
    checked = _bounded_int if _has_long_digit_run(text) else None
    return json.loads(text, parse_int=checked, parse_constant=_no_constant)


def check_box(raw: object) -> Box:
    """A caller's box -> (x, y, w, h) floats; BoxError (a UserError and a ValueError) saying what is wrong.
    `raw` is any sequence of 4 numbers: a list, a tuple, a numpy row."""
    if isinstance(raw, (str, bytes, dict)) or not isinstance(raw, Collection):
        raise BoxError(f"a box is 4 numbers [x, y, w, h], got {type(raw).__name__} {short_repr(raw)}")
    if len(raw) != 4:
        raise BoxError(f"a box is 4 numbers [x, y, w, h], got {len(raw)}")
    x, y, w, h = (_number(v, name) for v, name in zip(raw, "xywh"))
    if w <= 0 or h <= 0:
        raise BoxError(f"box width and height must be positive, got w={w:g}, h={h:g}")
    return (x, y, w, h)

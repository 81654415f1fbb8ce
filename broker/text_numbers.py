"""Numbers written as text: with thousands separators, decimal commas, or as percentages.

Intake (``broker.intake``) decides, column by column, whether a text column holds numbers
and how they were written; the readers here turn one value into a number, the same way
for training rows and for held-out rows. A comma is a decimal mark only in a
semicolon-separated table (``decimal_comma``), where the dot groups thousands
("7.876,63"); elsewhere the comma groups thousands ("1,234,567").
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from broker.schema import NumberFormat

# "1,234,567" or "1,234.5" (groups of three digits); a group never starts with "0,"
# (that is a decimal comma), and "1,5" does not match
GROUPED_NUMBER = re.compile(r"^[+-]?(?:0|[1-9]\d{0,2}(?:,\d{3})*)(?:\.\d+)?$")
# "7.876,63", "-7,6" or "1500": a number as written where the decimal mark is a comma
EUROPEAN_NUMBER = re.compile(r"^[+-]?(?:\d{1,3}(?:\.\d{3})+|\d+)(?:,\d+)?$")
DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")
PLAIN_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
# text ending in a percent sign ("12.5%", "12,5 %"); the text before it is checked apart
_PERCENT = re.compile(r"^(\S.*?)\s*%$")
# an exponent longer than this many digits is beyond any float, whatever its mantissa
_MAX_EXPONENT_DIGITS = 9


def ungrouped(value: Any) -> Any:
    """A text number with commas grouping thousands ("1,234.5") without them; any
    other value as it is."""
    if not isinstance(value, str):
        return value
    value = value.strip()
    if "," in value and GROUPED_NUMBER.match(value):
        return value.replace(",", "")
    return value


def european(value: Any) -> Any:
    """A text number written with a decimal comma and dots grouping thousands
    ("7.876,63", "1.500") as "7876.63", "1500"; else as `ungrouped` reads it."""
    if not isinstance(value, str):
        return value
    value = value.strip()
    if EUROPEAN_NUMBER.match(value):
        return value.replace(".", "").replace(",", ".")
    return ungrouped(value)


def percent_number(value: Any) -> str | None:
    """The text before the percent sign ("12.5" of "12.5 %"), when `value` is text
    that ends in one after ASCII characters; else None."""
    if not isinstance(value, str):
        return None
    match = _PERCENT.match(value.strip())
    if match is None or not match.group(1).isascii():
        return None
    return match.group(1)


def percent_value(
    value: Any, number_format: NumberFormat, decimal_comma: bool, *, shift: int = -2
) -> float | None:
    """A percentage as its fraction ("12.5%" is 0.125), read as `number_format` in a
    table whose decimal mark is a comma or not; None when `value` is no percentage
    written that way. ``shift=0`` gives the number as written (12.5) instead.

    With a decimal comma a value with a dot and no comma ("1.500%") is None: it could
    be read two ways. A semicolon table's ``PERCENT`` column has no commas at all."""
    number = percent_number(value)
    if number is None:
        return None
    if number_format == NumberFormat.PERCENT_DECIMAL_COMMA:
        if EUROPEAN_NUMBER.match(number) is None or (
            "." in number and "," not in number
        ):
            return None
        text = european(number)
    elif decimal_comma:
        if PLAIN_NUMBER.match(number) is None:
            return None
        text = number
    else:
        if GROUPED_NUMBER.match(number) is None and PLAIN_NUMBER.match(number) is None:
            return None
        text = ungrouped(number)
    return _shifted(text, shift)


def percent_format(values: pd.Series, decimal_comma: bool) -> NumberFormat | None:
    """The one way every value of `values` is written as a percentage, or None.

    A semicolon table's percentages take its decimal comma ("12,5%", and whole ones
    such as "12%"), unless every value has a decimal point and none a comma ("0.125%"),
    as pandas reads that table's plain numbers."""
    formats = [NumberFormat.PERCENT]
    if decimal_comma:
        formats.insert(0, NumberFormat.PERCENT_DECIMAL_COMMA)
    for number_format in formats:
        if all(
            percent_value(v, number_format, decimal_comma) is not None for v in values
        ):
            return number_format
    return None


def percent_example(number_format: NumberFormat) -> str:
    """12.5% as `number_format` writes it, quoted, for messages."""
    return (
        "'12,5%'" if number_format == NumberFormat.PERCENT_DECIMAL_COMMA else "'12.5%'"
    )


def is_percentage(value: Any, decimal_comma: bool) -> bool:
    """`value` is a percentage in some way a table of this kind may write one."""
    formats = [NumberFormat.PERCENT]
    if decimal_comma:
        formats.append(NumberFormat.PERCENT_DECIMAL_COMMA)
    return any(percent_value(value, f, decimal_comma) is not None for f in formats)


def percentages(
    values: pd.Series,
    number_format: NumberFormat,
    decimal_comma: bool,
    *,
    shift: int = -2,
) -> pd.Series:
    """Text percentages as float64 fractions (see `percent_value`); missing values,
    and values that are no such percentage, become NaN."""
    numbers = [
        np.nan
        if _is_missing(v)
        else percent_value(v, number_format, decimal_comma, shift=shift)
        for v in values
    ]
    return pd.Series(numbers, index=values.index, dtype=np.float64)


def _is_missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _shifted(text: str, shift: int) -> float:
    """A plain number's text times 10**shift, rounded once to a float (0.333 for
    "33.3" and -2); an exponent beyond float range gives inf or 0.0, never an error."""
    mantissa, _, exponent = text.lower().partition("e")
    digits = exponent.lstrip("+-").lstrip("0")
    if len(digits) > _MAX_EXPONENT_DIGITS:
        power = 10 ** (_MAX_EXPONENT_DIGITS + 1)
        power = -power if exponent.startswith("-") else power
    else:
        power = int(exponent or "0")
    return float(f"{mantissa}e{power + shift}")

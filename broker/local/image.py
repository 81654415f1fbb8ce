"""Numeric columns read as an image: which columns, in which order, at which pixel.

A table whose features are s*s numeric columns named pixel_0, pixel_1, ... (or px0, ...)
is taken for one square grey image; the `input_shape` option names the shape outright.
Pixel columns the intake dropped because they were constant keep their places and read 0.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from broker.errors import ConfigurationError
from broker.local.trainer import TrialData

_PIXEL_NAME = re.compile(r"^(?:pixel|px)_?(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class ImageLayout:
    """How the numeric columns form an image: its shape, the columns in pixel order and
    each column's position in the flattened image."""

    shape: list[int]
    columns: list[str]
    positions: list[int]


def detect_image_shape(
    numeric: list[str], categorical: list[str], dropped: list[str] | None = None
) -> list[int] | None:
    """[1, s, s] when the features are s*s numeric columns named pixel_0, pixel_1, ...

    Pixel columns the intake dropped (constant ones) count too. Only square grey
    images of at least 4x4 are recognised; anything else is a table.
    """
    layout = image_layout(numeric, categorical, dropped or [], None)
    return layout.shape if layout is not None else None


def image_layout(
    numeric: list[str],
    categorical: list[str],
    dropped: list[str],
    input_shape: list[int] | None,
) -> ImageLayout | None:
    """The image the columns form, given by `input_shape` or detected from their names.

    Raises:
        ConfigurationError: `input_shape` is given and the columns cannot fill it.
    """
    numbers = _pixel_numbers(numeric)
    dropped_numbers = _pixel_numbers([d for d in dropped if _PIXEL_NAME.match(d)])
    if input_shape is None:
        if categorical or numbers is None or dropped_numbers is None:
            return None
        every = sorted(numbers + dropped_numbers)
        side = math.isqrt(len(every))
        if side < 4 or side * side != len(every):
            return None
        if every != list(range(every[0], every[0] + len(every))):
            return None
        input_shape = [1, side, side]
        first = every[0]
    else:
        first = min(numbers + (dropped_numbers or [])) if numbers else 0

    pixels = math.prod(input_shape)
    if numbers is not None and not categorical:
        order = sorted(range(len(numeric)), key=lambda i: numbers[i])
        positions = [numbers[i] - first for i in order]
        columns = [numeric[i] for i in order]
    else:
        positions = list(range(len(numeric)))
        columns = list(numeric)
    if categorical or not columns or max(positions) >= pixels:
        raise ConfigurationError(
            f"input_shape {input_shape} needs at most {pixels} numeric pixel columns "
            f"(named pixel_0, pixel_1, ... or given in pixel order) and no categorical "
            f"ones; the data has {len(numeric)} numeric and {len(categorical)} "
            f"categorical feature columns"
        )
    if positions == list(range(pixels)):
        positions = []
    return ImageLayout(shape=list(input_shape), columns=columns, positions=positions)


def _pixel_numbers(names: list[str]) -> list[int] | None:
    numbers = []
    for name in names:
        match = _PIXEL_NAME.match(name)
        if match is None:
            return None
        numbers.append(int(match.group(1)))
    return numbers


def check_image(data: TrialData, layout: ImageLayout) -> None:
    if data.x_num_train.shape[1] != len(layout.columns):
        raise ConfigurationError(
            f"pixel columns must have no missing values to form an image of shape "
            f"{layout.shape}; fill them (with 0, for example) or leave input_shape out"
        )

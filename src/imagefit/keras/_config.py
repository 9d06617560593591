"""Keras' global image settings, read without importing Keras: when the user's program has
imported Keras, its `image_data_format()` and `floatx()` are used (as Keras' own generator
does); otherwise Keras' defaults, `"channels_last"` and `"float32"`.
"""

from __future__ import annotations

import sys

DATA_FORMATS = ("channels_last", "channels_first")


def image_data_format() -> str:
    keras = sys.modules.get("keras")
    config = getattr(keras, "config", None)
    if config is not None and hasattr(config, "image_data_format"):
        return str(config.image_data_format())
    return "channels_last"


def floatx() -> str:
    keras = sys.modules.get("keras")
    config = getattr(keras, "config", None)
    if config is not None and hasattr(config, "floatx"):
        return str(config.floatx())
    return "float32"


def data_format_or_default(data_format: str | None) -> str:
    """`data_format`, or the global setting when None; a ValueError for anything else."""
    if data_format is None:
        return image_data_format()
    value = str(data_format).lower()
    if value not in DATA_FORMATS:
        raise ValueError(f'The `data_format` argument must be one of "channels_first", '
                         f'"channels_last". Received: {data_format}')
    return value

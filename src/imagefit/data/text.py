"""Text columns (paths, content hashes, split names) as NumPy arrays that stay small at a
million rows: NumPy's variable-width UTF-8 strings (`StringDType`) take 16 bytes a row plus the
text, where a fixed-width unicode array takes 4 bytes a character of its longest row (a million
paths of 53 characters: 77 MB against 212 MB; their SHA-256 hex digests: 80 MB against 256 MB).
Either kind indexes and compares as `str`; `as_text` accepts both.
"""

from __future__ import annotations

import numpy as np

STRINGS = np.dtypes.StringDType()


def compact(column: np.ndarray | None) -> np.ndarray | None:
    """`column` as variable-width strings; a column that is not unicode text, or holds names
    that are not valid UTF-8 (undecodable bytes kept by surrogateescape), stays as it is.

    Example:
        >>> compact(np.array(["a.png", "folder/b.png"])).dtype
        StringDType()
    """
    if column is None or column.dtype == STRINGS or column.dtype.kind != "U":
        return column
    try:
        return column.astype(STRINGS)
    except (UnicodeEncodeError, TypeError):  # NumPy says "Invalid unicode code point found"
        return column


def as_text(values) -> np.ndarray:
    """A str array of `values` (any sequence of str, or an array of either kind), without
    copying one that already is.

    Example:
        >>> as_text(["x", "y"]).dtype.kind, as_text(compact(np.array(["x"]))).dtype.kind
        ('U', 'T')
    """
    array = np.asarray(values)
    if array.dtype == STRINGS:
        return array
    return np.asarray(values, dtype=str)


def fixed_width(values, width: int) -> np.ndarray | None:
    """`values` as a '<U{width}' array when every one has exactly `width` characters (the
    layout vectorised code can view as code points), else None."""
    array = as_text(values)
    if array.dtype.kind == "U":
        return array if array.dtype.itemsize == 4 * width else None
    lengths = np.strings.str_len(array)
    if len(array) and (lengths.min() != width or lengths.max() != width):
        return None
    return array.astype(f"<U{width}")


def concat_text(columns) -> np.ndarray:
    """`np.concatenate` of text columns of either kind: NumPy cannot mix them when a
    fixed-width one holds names that are not valid UTF-8 (`compact` left it as it was).

    Example:
        >>> concat_text([compact(np.array(["a"])), np.array(["b\\udcff"])]).tolist()
        ['a', 'b\\udcff']
    """
    columns = list(columns)
    if len({c.dtype == STRINGS for c in columns}) < 2:
        return np.concatenate(columns)
    return np.concatenate([np.array(c.tolist(), dtype=str) if c.dtype == STRINGS else c
                           for c in columns])

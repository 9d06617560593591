"""Checking parameters, in the manner of scikit-learn's `utils/validation.py`: one message
format (`param_error`), the checks every public entry point uses, and `check_is_fitted`.
Constraint tables live next to what they constrain and are checked here.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable, Sequence

from imagefit.errors import ConfigError, NotFittedError


def param_error(name: str, expected: str, value: Any) -> ConfigError:
    """The one message for a bad parameter, e.g.
    `The 'val_fraction' parameter must be a float in (0, 1). Got 1.5 instead.`"""
    return ConfigError(f"The {name!r} parameter must be {expected}. Got {value!r} instead.")


def check_int(name: str, value: Any, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """`value` as an int within the bounds (inclusive); bools are refused."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and ((minimum is not None and value < minimum)
               or (maximum is not None and value > maximum)):
        ok = False
    if not ok:
        raise param_error(name, "an int" + _bounds(minimum, maximum, False, False), value)
    return int(value)


def check_scalar(name: str, value: Any, minimum: float | None = None,
                 maximum: float | None = None, *, low_open: bool = False,
                 high_open: bool = False) -> float:
    """`value` as a finite float within the bounds (closed unless `*_open`); bools refused."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and value == value and abs(value) != float("inf"))
    if ok and minimum is not None:
        ok = value > minimum if low_open else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if high_open else value <= maximum
    if not ok:
        raise param_error(name, "a float" + _bounds(minimum, maximum, low_open, high_open), value)
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """`value` when it is one of `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise param_error(name, f"one of {list(choices)}", value)
    return value


def check_params(params: dict[str, Any], constraints: Iterable[tuple]) -> None:
    """Check a constraint table: rows of (name, kind, minimum, maximum), kind int or float.
    None values mean "the default" and pass."""
    for name, kind, low, high in constraints:
        value = params[name]
        if value is None:
            continue
        if kind is int:
            check_int(name, value, low, high)
        else:
            check_scalar(name, value, low, high)


def check_is_fitted(estimator: Any, attribute: str = "classes_") -> None:
    """Raise `NotFittedError` unless `estimator` has been fitted (or loaded).

    Example:
        >>> check_is_fitted(imagefit.ImageClassifier())   # doctest: +SKIP
        Traceback (most recent call last):
        NotFittedError: This ImageClassifier is not fitted yet. ...
    """
    if not hasattr(estimator, attribute):
        raise NotFittedError(f"This {type(estimator).__name__} is not fitted yet. Call 'fit' "
                             f"with training data, or load one with imagefit.load_model().")


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
    # Bounds print as given: pass ints where the message should read "[0, 1)".
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""

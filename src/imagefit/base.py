"""The scikit-learn estimator protocol shared by imagefit's estimators: parameters are the
`__init__` arguments, stored as given; `get_params`, `set_params` and a `repr` of the changed
ones (as `sklearn.base.BaseEstimator`).
"""

from __future__ import annotations

import inspect

from imagefit.errors import ConfigError


class BaseEstimator:
    """Parameters = `__init__`'s keyword arguments, each stored under its own name."""

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        valid = self.get_params()
        for key, value in params.items():
            if key not in valid:
                raise ConfigError(f"Invalid parameter {key!r} for {type(self).__name__}. "
                                  f"Valid parameters are: {sorted(valid)}.")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        defaults = type(self)().get_params()
        changed = {k: v for k, v in self.get_params().items() if v != defaults[k]}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

"""Keras' `keras.preprocessing.image` names, from `imagefit.keras` (see its docstring)."""

from imagefit.keras import *  # noqa: F403 - the module is these names
from imagefit.keras import __all__  # noqa: F401

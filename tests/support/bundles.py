"""Comparing a bundle's forecasts where float32 tolerance applies."""

from __future__ import annotations

import numpy as np

from operators.bundle import Bundle


def in_target_units(bundle: Bundle, forecasts: np.ndarray) -> np.ndarray:
    """Forecasts back in the model's normalised output units (where float32 tolerance applies)."""
    norm = bundle.normalisation
    return (np.asarray(forecasts) - norm.target_mean) / norm.target_std

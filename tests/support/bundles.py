"""Comparing a bundle's forecasts where float32 tolerance applies."""

from __future__ import annotations

import numpy as np

from operators.bundle import Bundle


def in_target_units(bundle: Bundle, forecasts: np.ndarray) -> np.ndarray:
    """Forecasts back in the model's normalised output units (where float32 tolerance applies)."""
    norm = bundle.normalisation
    return (np.asarray(forecasts) - norm.target_mean) / norm.target_std


def variant(bundle: Bundle, *, nan_weights: bool = False, overflow_above: float | None = None) -> Bundle:
    """The bundle with a broken model, as a user could bring one (both bundle and load fine):

    - ``nan_weights``: one NaN in the first layer's recurrent kernel (every state and output NaN);
    - ``overflow_above``: the output layer scaled by 1/threshold and the target scale set to float64's
      largest number, so every output above the threshold (normalised units, absolute) is an infinity once
      scaled: a head that explodes for some ticks only.

    The Keras model and the version follow the weights, so ``save_bundle`` of it loads again."""
    import dataclasses

    from operators.bundle import _version_hash

    w = bundle.weights
    layers, norm = w.layers, bundle.normalisation
    dense_kernel, dense_bias = w.dense_kernel, w.dense_bias
    if nan_weights:
        recurrent = layers[0].recurrent.copy()
        recurrent[0, 0] = np.nan
        layers = (dataclasses.replace(layers[0], recurrent=recurrent), *layers[1:])
    if overflow_above is not None:
        dense_kernel = (dense_kernel / np.float32(overflow_above)).astype(np.float32)
        dense_bias = float(np.float32(dense_bias / overflow_above))
        norm = dataclasses.replace(norm, target_mean=0.0, target_std=float(np.finfo(np.float64).max))
    weights = dataclasses.replace(w, layers=layers, dense_kernel=dense_kernel, dense_bias=dense_bias)
    model = None
    if bundle.keras_model is not None:
        import keras  # noqa: PLC0415 - the tests' Keras

        model = keras.models.clone_model(bundle.keras_model)
        arrays = [a for layer in layers for a in (layer.kernel, layer.recurrent, layer.bias)]
        model.set_weights(arrays + [dense_kernel.reshape(-1, 1), np.array([dense_bias], np.float32)])
    out = dataclasses.replace(bundle, weights=weights, normalisation=norm, keras_model=model)
    return dataclasses.replace(out, model_version=_version_hash(weights, out.meta()))

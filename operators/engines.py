"""Which engine steps a bundle's chain: the NumPy kernel or Keras itself (``engine = auto | kernel | keras``).

Both implement one small interface, the forecaster's seam (:class:`Stepper`): ``step(x, lengths, states,
reset, in_place)`` advances each instrument's gathered state rows by its ticks (ticks laid out instrument
after instrument, state vectors in :attr:`operators.layers.Stack.state_vectors` order) and returns the
outputs after every tick and the final state vectors, so the state table, its columns and batch
invariance are the same whichever engine runs.

- ``kernel``: :class:`operators.lstm.RaggedLSTM`, NumPy; serves the chains :mod:`operators.keras_chain`
  describes without ``keras_layers``. Asked for with a layer it lacks, it is refused in one line naming it.
- ``keras``: :class:`operators.keras_engine.KerasEngine`, the model's own layers run by Keras (TensorFlow is
  imported only then); serves every chain a bundle holds. In an install without TensorFlow it is refused
  in one line saying what to install.
- ``auto`` (default): the kernel when it computes every layer, else Keras; :attr:`Choice.line` says which
  and why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from operators.errors import BundleError
from operators.keras_chain import kernel_refusal
from operators.layers import Stack

ENGINES = ("auto", "kernel", "keras")


class Stepper(Protocol):
    outputs: int

    def step(self, x: np.ndarray, lengths: np.ndarray, states: list[np.ndarray], reset: np.ndarray | None = None,
             in_place: bool = False) -> tuple[np.ndarray, list[np.ndarray]]: ...


@dataclass(frozen=True)
class Choice:
    engine: str  # "kernel" or "keras"
    why: str

    @property
    def line(self) -> str:
        return f"engine: {self.engine} ({self.why})"


def choose(stack: Stack, engine: str = "auto") -> Choice:
    """The engine for ``stack``; BundleError in one line for an unknown name or a kernel that cannot serve it."""
    if engine not in ENGINES:
        raise BundleError(f"engine {engine!r} is not one of {', '.join(repr(e) for e in ENGINES)}")
    refusal = kernel_refusal(stack)
    if engine == "kernel":
        if refusal is not None:
            raise BundleError(f'engine = "kernel" cannot serve this model: {refusal}; use engine = "keras" or "auto"')
        return Choice("kernel", 'asked for with engine = "kernel"')
    if engine == "keras":
        return Choice("keras", 'asked for with engine = "keras"')
    if refusal is None:
        return Choice("kernel", "auto: the NumPy kernel computes every layer of the model")
    return Choice("keras", f"auto: the NumPy kernel cannot; {refusal}")


def compiled_line(kernel: Stepper) -> tuple[bool, str]:
    """Whether the compiled time loop (operators.compiled) steps the model, and one line saying so or why not."""
    if getattr(kernel, "compiled", False):
        from operators import compiled  # noqa: PLC0415

        k = compiled.load()
        where = f"machine code cached in {os.environ.get('NUMBA_CACHE_DIR')}" if k.cached else "no writable cache"
        return True, f"compiled time loop: on (ready in {k.seconds:.1f} s; {where})"
    why = getattr(kernel, "why_not_compiled", None)
    if why is None:
        return False, "compiled time loop: not used (the Keras engine steps the model)"
    return False, f"compiled time loop: OFF, the NumPy path steps the model, several times slower ({why})"


def stepper(bundle, choice: Choice) -> Stepper:
    """The chosen engine built for ``bundle`` (an :class:`operators.bundle.Bundle`)."""
    if choice.engine == "kernel":
        from operators.lstm import RaggedLSTM  # noqa: PLC0415

        return RaggedLSTM(bundle.stack)
    from operators.keras_engine import KerasEngine  # noqa: PLC0415 - TensorFlow only when this engine is picked

    return KerasEngine(bundle, why=choice.why)

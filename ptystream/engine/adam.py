"""Adam with a per-element step count, on float32 variables the engine owns.

Written here rather than taken from ``keras.optimizers.Adam`` because the engine must own the
optimiser state: it pads the moments when the object canvas grows, saves and restores them, and
gives each pixel its own bias correction (a pixel first lit late in a scan would otherwise take
full-size first steps).
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["Adam", "adam_update"]

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


class Adam:
    """Adam state for one real variable, with a per-element step count (lazy, sparse-aware).

    Elements whose gradient is exactly zero (outside every probe window of the batch) keep their
    value and their moments, so a pixel's bias correction counts only the steps that touched it.
    """

    def __init__(self, shape: tuple[int, ...]):
        self.m = tf.Variable(tf.zeros(shape), trainable=False)
        self.v = tf.Variable(tf.zeros(shape), trainable=False)


def adam_update(var, grad, state: Adam, count, touched, lr) -> None:
    m = state.m.assign(tf.where(touched, _BETA1 * state.m + (1 - _BETA1) * grad, state.m))
    v = state.v.assign(tf.where(touched, _BETA2 * state.v + (1 - _BETA2) * grad**2, state.v))
    t = tf.maximum(count, 1.0)
    m_hat = m / (1.0 - _BETA1**t)
    v_hat = v / (1.0 - _BETA2**t)
    var.assign_sub(tf.where(touched, lr * m_hat / (tf.sqrt(v_hat) + _EPS), 0.0))

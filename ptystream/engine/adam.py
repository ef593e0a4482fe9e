"""Adam with a per-element step count, on float32 variables the engine owns.

Written here rather than taken from ``keras.optimizers.Adam`` because the engine must own the
optimiser state: it pads the moments when the object canvas grows, saves and restores them, and
gives each pixel its own bias correction (a pixel first lit late in a scan would otherwise take
full-size first steps).
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["Adam", "adam_update", "sparse_adam_update", "values_at"]

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


def values_at(var: tf.Variable, pixels: tf.Tensor) -> tf.Tensor:
    """``var``'s elements at ``pixels`` ``(..., rank)`` (gathered from its value: XLA has no
    kernel for a gather straight from a resource variable)."""
    return tf.gather_nd(tf.convert_to_tensor(var), pixels)


def sparse_adam_update(var, state: Adam, pixels, grad, count, write, lr) -> None:
    """Adam on the elements ``pixels`` ``(..., rank)`` of ``var`` only, with their gradients
    ``grad`` (summed over duplicates, so duplicate entries write identical values) and step
    counts ``count``; nothing changes when ``write`` is False. Costs O(len(pixels)), not
    O(var.size)."""
    m_old, v_old = (
        tf.gather_nd(tf.convert_to_tensor(state.m), pixels),
        tf.gather_nd(tf.convert_to_tensor(state.v), pixels),
    )
    old = values_at(var, pixels)
    m = _BETA1 * m_old + (1 - _BETA1) * grad
    v = _BETA2 * v_old + (1 - _BETA2) * grad**2
    t = tf.maximum(count, 1.0)
    step = lr * (m / (1.0 - _BETA1**t)) / (tf.sqrt(v / (1.0 - _BETA2**t)) + _EPS)
    state.m.scatter_nd_update(pixels, tf.where(write, m, m_old))
    state.v.scatter_nd_update(pixels, tf.where(write, v, v_old))
    var.scatter_nd_update(pixels, tf.where(write, old - step, old))

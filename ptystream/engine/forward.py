"""The pieces of the forward model and the losses, as pure TensorFlow functions (the stages of
:mod:`ptystream.engine.model` are built from them).

Conventions: real-space arrays are indexed naturally (object pixel ``[r, c]``); FFTs are
orthonormal with zero frequency at ``[0, 0]``, so measured (centred) frames are ifftshifted once
when they enter the engine and the compiled step never shifts. Exit waves carry a mode axis
``(B, M, n, n)``: ``M`` mutually incoherent probe modes (``M = 1`` for a coherent probe).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = [
    "angular_spectrum",
    "data_loss",
    "farfield",
    "incoherent_intensity",
    "shifted_probes",
    "summed_at",
    "total_variation",
    "window_pixels",
]

#: Floor inside square roots and logarithms, so gradients stay finite where a prediction is 0.
_FLOOR = 1e-12


def window_pixels(top_left: tf.Tensor, n: int) -> tf.Tensor:
    """``(row, col)`` object pixels ``(B, n, n, 2)`` int32 of the windows whose top-left pixels
    are ``top_left`` ``(B, 2)``: indices for ``tf.gather_nd`` and scatter updates."""
    rows = top_left[:, 0, None, None] + tf.range(n)[None, :, None]
    cols = top_left[:, 1, None, None] + tf.range(n)[None, None, :]
    rows, cols = (
        tf.broadcast_to(rows, tf.shape(rows + cols)),
        tf.broadcast_to(cols, tf.shape(rows + cols)),
    )
    return tf.stack([rows, cols], axis=-1)


def summed_at(values: tf.Tensor, pixels: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
    """``values`` ``(B, n, n)`` at ``pixels`` ``(B, n, n, 2)`` replaced by their sum over every
    entry naming the same pixel (the gradient of a pixel seen by overlapping windows)."""
    return tf.gather_nd(tf.tensor_scatter_nd_add(tf.zeros(shape), pixels, values), pixels)


def shifted_probes(probe: tf.Tensor, frac_px: tf.Tensor) -> tf.Tensor:
    """Probe modes ``(M, n, n)`` moved by sub-pixel offsets ``frac_px`` ``(B, 2)`` by a Fourier
    shift.

    Returns ``(B, M, n, n)`` complex64.
    """
    n = probe.shape[-1]
    freq = tf.constant(np.fft.fftfreq(n), tf.float32)
    phase = (
        -2.0
        * np.pi
        * (
            frac_px[:, 0, None, None] * freq[None, :, None]
            + frac_px[:, 1, None, None] * freq[None, None, :]
        )
    )
    ramp = tf.complex(tf.cos(phase), tf.sin(phase))
    return tf.signal.ifft2d(tf.signal.fft2d(probe)[None] * ramp[:, None])


def farfield(exit_waves: tf.Tensor) -> tf.Tensor:
    """Far-field wave ``(..., n, n)`` of exit waves ``(..., n, n)``: the orthonormal FFT (zero
    frequency at [0, 0])."""
    n = exit_waves.shape[-1]
    return tf.signal.fft2d(exit_waves) / tf.cast(n, tf.complex64)


def angular_spectrum(
    waves: tf.Tensor, q: tf.Tensor, distance_m: tf.Tensor, band: tf.Tensor | None = None
) -> tf.Tensor:
    """``waves`` ``(..., n, n)`` propagated by ``distance_m`` (a tensor, so it can be trained)
    with the angular-spectrum method.

    ``q`` ``(n, n)`` is :func:`ptystream.optics.angular_spectrum_phase`, ifftshifted (zero
    frequency at [0, 0]); the kernel is ``exp(-2 pi i z q)``, times ``band`` (1 where a
    frequency propagates, 0 for evanescent ones) when given. Valid for ``z <= n dx^2 /
    lambda``.
    """
    phase = -2.0 * np.pi * distance_m * q
    kernel = tf.complex(tf.cos(phase), tf.sin(phase))
    if band is not None:
        kernel *= tf.cast(band, tf.complex64)
    return tf.signal.ifft2d(tf.signal.fft2d(waves) * kernel)


def incoherent_intensity(fields: tf.Tensor) -> tf.Tensor:
    """Intensity ``(B, n, n)`` of fields ``(B, M, n, n)`` at the detector: the ``M`` modes are
    mutually incoherent, so their intensities add."""
    return tf.reduce_sum(tf.math.real(fields) ** 2 + tf.math.imag(fields) ** 2, axis=1)


def data_loss(
    kind: str,
    predicted: tf.Tensor,
    measured: tf.Tensor,
    offset: tf.Tensor,
    weights: tf.Tensor,
    pixel_mask: tf.Tensor,
) -> tf.Tensor:
    """Misfit between predicted and measured intensities ``(B, n, n)`` (normalised units).

    Per frame, the mean over the detector pixels where ``pixel_mask`` (``(n, n)``, or
    ``(B, n, n)``: one per frame) is 1; over frames, the mean
    weighted by ``weights`` (0 for padding). ``kind`` is a :class:`~ptystream.config.LossKind`:

    - ``amplitude``: ``(sqrt(I_pred + c) - sqrt(max(I_meas + c, 0)))^2`` with ``c = 3/8 +
      sigma^2`` in the data's units (generalised Anscombe): stabilises the variance of Poisson
      counts with Gaussian read noise, without clipping negative counts first (which would bias
      the amplitude).
    - ``intensity``: ``(I_pred - I_meas)^2``.
    - ``poisson``: the Poisson deviance ``I_pred - I + I log(I / I_pred)`` with ``I =
      max(I_meas, 0)``; zero where the prediction matches.
    """
    if kind == "amplitude":
        residual = tf.sqrt(tf.maximum(predicted + offset, _FLOOR)) - tf.sqrt(
            tf.maximum(measured + offset, 0.0)
        )
        per_pixel = residual**2
    elif kind == "intensity":
        per_pixel = (predicted - measured) ** 2
    elif kind == "poisson":
        counts = tf.maximum(measured, 0.0)
        per_pixel = (
            predicted
            - counts
            + counts * (tf.math.log(counts + _FLOOR) - tf.math.log(predicted + _FLOOR))
        )
    else:
        raise ValueError(f"unknown loss {kind!r}")
    n_valid = tf.maximum(tf.reduce_sum(pixel_mask, axis=[-2, -1]), 1.0)
    per_frame = tf.reduce_sum(per_pixel * pixel_mask, axis=[1, 2]) / n_valid
    return tf.reduce_sum(per_frame * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)


def total_variation(patches: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Mean isotropic total variation of complex object patches ``(B, n, n)``, weighted by frame.

    Computed on the patches of a batch, so its cost is bounded and pixels outside the batch keep
    a zero gradient (the engine's per-pixel Adam relies on that).
    """
    dy = patches[:, 1:, :-1] - patches[:, :-1, :-1]
    dx = patches[:, :-1, 1:] - patches[:, :-1, :-1]
    magnitude = tf.sqrt(
        tf.math.real(dy * tf.math.conj(dy)) + tf.math.real(dx * tf.math.conj(dx)) + _FLOOR
    )
    per_frame = tf.reduce_mean(magnitude, axis=[1, 2])
    return tf.reduce_sum(per_frame * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)

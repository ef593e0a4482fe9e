"""Far-field forward model and loss, as pure TensorFlow functions.

Conventions: real-space arrays are indexed naturally (object pixel ``[r, c]``); FFTs are
orthonormal with zero frequency at ``[0, 0]``, so measured (centred) frames are ifftshifted once
when they enter the engine and the compiled step never shifts.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = [
    "amplitude_loss",
    "extract_patches",
    "farfield_intensity",
    "shifted_probes",
]


def extract_patches(obj: tf.Tensor, top_left: tf.Tensor, n: int) -> tf.Tensor:
    """Object patches ``(B, n, n)`` whose top-left pixels are ``top_left`` ``(B, 2)`` int32."""
    width = tf.shape(obj)[1]
    rows = top_left[:, 0, None, None] + tf.range(n)[None, :, None]
    cols = top_left[:, 1, None, None] + tf.range(n)[None, None, :]
    return tf.gather(tf.reshape(obj, [-1]), rows * width + cols)


def shifted_probes(probe: tf.Tensor, frac_px: tf.Tensor) -> tf.Tensor:
    """The probe moved by sub-pixel offsets ``frac_px`` ``(B, 2)`` by a Fourier shift.

    Returns ``(B, n, n)`` complex64.
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
    return tf.signal.ifft2d(tf.signal.fft2d(probe)[None] * ramp)


def farfield_intensity(exit_waves: tf.Tensor) -> tf.Tensor:
    """Far-field intensity of exit waves ``(B, n, n)`` with an orthonormal FFT (zero freq at 0)."""
    n = exit_waves.shape[-1]
    spectrum = tf.signal.fft2d(exit_waves) / tf.cast(n, tf.complex64)
    return tf.math.real(spectrum) ** 2 + tf.math.imag(spectrum) ** 2


def amplitude_loss(
    predicted: tf.Tensor, measured: tf.Tensor, offset: tf.Tensor, weights: tf.Tensor
) -> tf.Tensor:
    """Variance-stabilised amplitude misfit, weighted mean over frames of the per-pixel mean.

    ``(sqrt(I_pred + c) - sqrt(max(I_meas + c, 0)))^2`` with ``c = 3/8 + sigma^2`` in the data's
    units (generalised Anscombe): stabilises the variance of Poisson counts with Gaussian read
    noise without clipping negative counts to zero first, which would bias the amplitude.
    """
    # The floor keeps the gradient of the square root finite where the prediction is zero.
    residual = tf.sqrt(tf.maximum(predicted + offset, 1e-12)) - tf.sqrt(
        tf.maximum(measured + offset, 0.0)
    )
    per_frame = tf.reduce_mean(residual**2, axis=[1, 2])
    return tf.reduce_sum(per_frame * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)

"""Run pty-chi's LSQML engine on a far-field scan for a fixed wall-time budget (a peer baseline).

Run only by an interpreter that has ``torch`` and ``ptychi`` (2.2.0), not the project's venv::

    /tmp/peer/bin/python benchmarks/_ptychi_peer.py IN.npz OUT.npz --seconds S [--noise gaussian]

``IN.npz``: ``frames`` (n, N, N) measured intensities in counts with the zero frequency at
``[N // 2, N // 2]``; ``positions_px`` (n, 2) probe centres (row, col) in object pixels; ``probe``
(N, N) complex initial probe (real space, centred); ``pixel_m``, ``wavelength_m``,
``distance_m``, ``detector_pixel_m`` (far field:
``pixel_m = wavelength * distance / (N * detector_pixel)``).

``OUT.npz``: ``object`` (H, W) complex64, ``origin_px`` (2,) the (row, col) of ``object[0, 0]`` in
the frame of ``positions_px``, ``epochs``, ``seconds`` (wall time of the epochs alone), ``loss``.

Conventions converted (pty-chi 2.2.0, read from its source):

* Data: pty-chi wants raw intensities (not square-rooted) and its far-field model is an
  unnormalised ``torch.fft.fft2`` with no shift, so a predicted pattern has its zero frequency at
  ``[0, 0]``. The centred frames are ``ifftshift``-ed here and passed with ``fft_shift=False``
  (exact for odd ``N`` too). The probe stays centred in real space (that only multiplies the
  far field by a phase), and pty-chi rescales its power from the data in the first epoch.
* Positions: pty-chi takes x (col) and y (row) separately, in pixels, with an arbitrary origin
  mapped to ``pos_origin_coords`` of the object buffer (``round(shape / 2) - 0.5`` by default);
  a patch's top-left pixel is ``position + pos_origin_coords - (N - 1) / 2``. This project puts a
  window's top-left corner at ``centre - N / 2``. Positions are given relative to an integer
  centre ``c`` of the scan, so integer input positions stay on the pixel grid (no Fourier-shift
  interpolation), and ``origin_px = c - pos_origin_coords - 0.5``.
* Noise model: ``gaussian`` (the default) is pty-chi's default and the one its own LSQML tests
  use: a Gaussian likelihood on amplitudes with ``sigma = 0.5``, the variance-stabilised form of
  Poisson counts (``var(sqrt(k)) ~ 1/4``). ``--noise poisson`` uses the Poisson likelihood.
* Time: epochs run one at a time (``task.run(1)``); the loop stops when starting another epoch
  would end more than half an epoch past ``--seconds`` (at least one epoch runs). Import and
  set-up are not counted.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import ptychi.api as api
import torch
from ptychi.api.task import PtychographyTask

MARGIN_PX = 8  # object buffer beyond the scanned area on each side, in object pixels


def reconstruct(
    frames: np.ndarray,
    positions_px: np.ndarray,
    probe: np.ndarray,
    pixel_m: float,
    wavelength_m: float,
    seconds: float,
    noise: str = "gaussian",
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """LSQML for ``seconds`` of wall time; returns the entries of ``OUT.npz``."""
    n = probe.shape[-1]
    centre = np.round((positions_px.max(0) + positions_px.min(0)) / 2)
    relative = positions_px - centre
    span = np.ceil(relative.max(0) - relative.min(0)).astype(int)
    shape = tuple(int(s) + n + 2 * MARGIN_PX for s in span)

    options = api.LSQMLOptions()
    options.data_options.wavelength_m = wavelength_m
    options.data_options.fft_shift = False  # shifted here, below
    options.object_options.pixel_size_m = pixel_m
    options.object_options.optimizable = True
    options.probe_options.optimizable = True
    options.probe_position_options.optimizable = False
    options.opr_mode_weight_options.optimizable = False
    rec = options.reconstructor_options
    rec.noise_model = api.NoiseModels(noise)
    rec.batch_size = min(batch_size, len(frames))
    rec.default_device = api.Devices.CPU
    rec.default_dtype = api.Dtypes.FLOAT32
    rec.random_seed = seed
    rec.num_epochs = 1

    task = PtychographyTask(
        options,
        diffraction_data=np.fft.ifftshift(frames.astype(np.float32), axes=(-2, -1)),
        object_data=np.ones((1, *shape), np.complex64),
        probe_data=probe.astype(np.complex64)[None, None],
        probe_position_x_px=relative[:, 1].astype(np.float32),
        probe_position_y_px=relative[:, 0].astype(np.float32),
    )
    pos_origin = task.object.pos_origin_coords.detach().cpu().numpy().astype(np.float64)

    epochs, spent, last = 0, 0.0, 0.0
    start = time.perf_counter()
    while epochs == 0 or spent + 0.5 * last < seconds:
        task.run(1)
        epochs += 1
        now = time.perf_counter() - start
        spent, last = now, now - spent
    table = task.reconstructor.loss_tracker.table
    return {
        "object": task.get_data_to_cpu("object", as_numpy=True)[0].astype(np.complex64),
        "origin_px": centre - pos_origin - 0.5,
        "epochs": epochs,
        "seconds": spent,
        "loss": float(table.iloc[-1].loss) if len(table) else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inp", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--noise", choices=("gaussian", "poisson"), default="gaussian")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()

    torch.set_num_threads(1)
    logging.getLogger("ptychi").setLevel(logging.WARNING)
    with np.load(args.inp) as data:
        result = reconstruct(
            frames=data["frames"],
            positions_px=np.asarray(data["positions_px"], np.float64),
            probe=data["probe"],
            pixel_m=float(data["pixel_m"]),
            wavelength_m=float(data["wavelength_m"]),
            seconds=args.seconds,
            noise=args.noise,
            batch_size=args.batch,
        )
    np.savez(args.out, **result)
    print(
        f"ptychi LSQML ({args.noise}): {result['epochs']} epochs in {result['seconds']:.2f} s, "
        f"loss {result['loss']:.4g}"
    )


if __name__ == "__main__":
    main()

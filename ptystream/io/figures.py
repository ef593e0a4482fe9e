"""A one-page PNG summary of a reconstruction (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ptystream.types import Estimate

__all__ = [
    "SCANNED_FRACTION",
    "scanned_area",
    "without_phase_ramp",
    "write_contact_sheet",
    "write_summary",
]

#: Pixels whose summed probe intensity is above this fraction of its maximum count as scanned
#: (shown); the rest of the canvas is masked in figures and on the dashboard.
SCANNED_FRACTION = 0.05


def write_summary(
    path: str | Path,
    estimate: Estimate,
    *,
    truth: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Object amplitude (with the scan positions) and phase (its linear ramp removed), probe
    amplitude and phase, loss against iteration; for a multislice object, the product of the
    slices and each slice's phase.

    Only pixels the probe lit (:func:`scanned_area`) are shown for the object.
    ``truth`` (on the estimate's grid) adds the ground truth's amplitude and phase for comparison.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lit = scanned_area(estimate.illumination)
    rows, cols = np.nonzero(lit)
    crop = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))

    def masked(a: np.ndarray) -> np.ndarray:
        return np.ma.masked_where(~lit[crop], a[crop])

    obj = without_phase_ramp(estimate.projected_object, lit)
    probe, probe_name = estimate.probe, "probe"
    if probe.ndim == 3:  # modes, strongest first: show the first, with its share of the power
        power = np.sum(np.abs(probe) ** 2, axis=(1, 2))
        probe, probe_name = probe[0], f"probe mode 0 of {len(power)} ({power[0] / power.sum():.0%})"
    of = " (product of the slices)" if estimate.n_slices > 1 else ""
    panels = [
        (f"object amplitude{of}, scan positions", masked(np.abs(obj)), "gray"),
        (f"object phase{of} (rad), ramp removed", masked(np.angle(obj)), "twilight"),
        (f"{probe_name} amplitude", np.abs(probe), "magma"),
        (f"{probe_name} phase (rad)", np.angle(probe), "twilight"),
    ]
    if estimate.n_slices > 1:
        for s, layer in enumerate(estimate.object):
            layer = without_phase_ramp(layer, lit)
            panels.append((f"slice {s} phase (rad)", masked(np.angle(layer)), "twilight"))
    if truth is not None:
        panels += [
            ("true amplitude", masked(np.abs(truth)), "gray"),
            ("true phase (rad)", masked(np.angle(truth)), "twilight"),
        ]
    n_cols = 4
    n_rows = (len(panels) + 1 + n_cols - 1) // n_cols
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4 * n_cols, 3.6 * n_rows))
    axes = axes.ravel()
    for ax, (name, image, cmap) in zip(axes, panels, strict=False):
        shown = ax.imshow(image, cmap=cmap)
        ax.set_title(name)
        ax.axis("off")
        fig.colorbar(shown, ax=ax, fraction=0.046)
    at = (estimate.positions_m - np.asarray(estimate.object_origin_m)) / estimate.pixel_size_m
    axes[0].plot(at[:, 1] - crop[1].start, at[:, 0] - crop[0].start, ".", ms=2, color="tab:orange")
    ax = axes[len(panels)]
    if len(estimate.loss):
        ax.semilogy(estimate.loss[:, 0], estimate.loss[:, 1], lw=0.6)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("loss")
    for ax in axes[len(panels) + 1 :]:
        ax.axis("off")
    fig.suptitle(title or f"{estimate.n_frames} frames, {estimate.iteration} iterations")
    return _save(fig, path)


def scanned_area(illumination: np.ndarray, fraction: float = SCANNED_FRACTION) -> np.ndarray:
    """bool mask of the pixels the probe lit: ``illumination`` (the summed probe intensity
    over the positions used, :attr:`ptystream.types.Estimate.illumination`) above ``fraction``
    of its maximum. All False before any frame (no illumination).

    Example
    -------
    >>> scanned_area(np.array([[0.0, 0.01, 1.0]])).tolist()
    [[False, False, True]]
    """
    illumination = np.asarray(illumination)
    top = float(illumination.max()) if illumination.size else 0.0
    return illumination > fraction * top if top > 0 else np.zeros(illumination.shape, bool)


def without_phase_ramp(obj: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``obj`` ``(H, W)`` complex with its global phase and linear phase ramp (the mean phase
    step between neighbouring pixels, over ``mask``) taken off, so that a tilt of the
    reconstruction (which the data cannot fix) does not hide the sample's phase."""
    both = mask[:, 1:] & mask[:, :-1], mask[1:, :] & mask[:-1, :]
    dx = np.angle(np.sum((obj[:, 1:] * np.conj(obj[:, :-1]))[both[0]]))
    dy = np.angle(np.sum((obj[1:, :] * np.conj(obj[:-1, :]))[both[1]]))
    yy, xx = np.indices(obj.shape)
    flat = obj * np.exp(-1j * (dy * yy + dx * xx))
    return flat * np.exp(-1j * np.angle(np.sum(flat[mask])))


def write_contact_sheet(
    path: str | Path, tiles: list[tuple[str, np.ndarray | None]], *, title: str = ""
) -> Path:
    """A grid of object phase images (radians), one per ``(caption, phase)``, each scaled to its
    1st-99th percentile (NaN where unlit; None for an input without a result, drawn as an
    empty tile with its caption)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols = min(4, max(1, len(tiles)))
    n_rows = max(1, -(-len(tiles) // n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3 * n_cols, 3.2 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (caption, phase) in zip(axes.ravel(), tiles, strict=False):
        if phase is not None:
            lo, hi = np.nanpercentile(phase, [1, 99])  # the sample's phase range, not 2 pi
            ax.imshow(np.ma.masked_invalid(phase), cmap="gray", vmin=lo, vmax=hi)
        else:
            ax.text(0.5, 0.5, "no result", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(caption, fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as PNG (creating the directory) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

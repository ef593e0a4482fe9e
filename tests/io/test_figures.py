"""The PNG pictures of a reconstruction: the one-page summary and the contact sheet of a
reprocessing, drawn by matplotlib without a display (estimates made by hand)."""

import dataclasses
import struct

import numpy as np
import pytest

from ptystream.io.figures import write_contact_sheet, write_summary


def png_size(path) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's header."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("modes, with_truth", [(1, False), (2, False), (1, True)])
def test_summary_is_a_png_of_the_panels(tmp_path, estimate, modes, with_truth):
    """Object and probe amplitude and phase (and the truth's), then the loss: 4 or 6 panels
    and one more, on 2 rows of 4 panels of 4 x 3.6 inches at 80 dpi."""
    est = estimate(12)
    if modes > 1:
        est = dataclasses.replace(est, probe=np.stack([est.probe, 0.3 * est.probe]))
    truth = np.ones_like(est.object) if with_truth else None
    png = write_summary(tmp_path / "figs" / "summary.png", est, truth=truth, title="a title")
    assert png == tmp_path / "figs" / "summary.png"
    assert png_size(png) == (4 * 4 * 80, 2 * 288)
    assert png.stat().st_size > 10_000  # drawn, not blank


@pytest.mark.parametrize("n_tiles, size", [(1, (240, 256)), (4, (960, 256)), (5, (960, 512))])
def test_contact_sheet_has_a_tile_per_input(tmp_path, n_tiles, size):
    rng = np.random.default_rng(n_tiles)
    phase = rng.uniform(-1, 1, (40, 50))
    phase[:5] = np.nan  # unlit
    tiles = [(f"scan {i}", phase) for i in range(n_tiles - 1)] + [("failed scan", None)]
    png = write_contact_sheet(tmp_path / "sheet.png", tiles, title="reprocessed")
    assert png_size(png) == size  # 3 x 3.2 inches per tile at 80 dpi, up to 4 columns

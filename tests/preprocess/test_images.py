"""Calibration images as beamlines keep them: HDF5 (one dataset, or named), NPY, NPZ, TIFF;
a stack averaged; every error names the profile key, the file and what to do."""

import h5py
import numpy as np
import pytest
import tifffile

from ptystream.preprocess import ImageFileError, read_image

KEY = "preprocess.dark_file"


def test_each_format_reads_and_a_stack_is_averaged(tmp_path):
    stack = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    mean = stack.mean(axis=0)
    with h5py.File(tmp_path / "darks.h5", "w") as f:
        f["entry/data/data"] = stack
    np.save(tmp_path / "dark.npy", stack)
    np.savez(tmp_path / "dark.npz", dark=stack[0])
    tifffile.imwrite(tmp_path / "dark.tif", stack, photometric="minisblack")
    assert np.array_equal(read_image(tmp_path / "darks.h5", KEY), mean)
    assert np.array_equal(read_image(tmp_path / "dark.npy", KEY), mean)
    assert np.array_equal(read_image(tmp_path / "dark.npz", KEY), stack[0])
    assert np.array_equal(read_image(tmp_path / "dark.tif", KEY), mean)
    assert read_image(tmp_path / "dark.npy", KEY).dtype == np.float64


def test_an_hdf5_file_with_several_images_needs_the_dataset_named(tmp_path):
    path = tmp_path / "cal.h5"
    with h5py.File(path, "w") as f:
        f["dark"] = np.ones((4, 4))
        f["flat/data"] = np.full((4, 4), 2.0)
    with pytest.raises(ImageFileError, match=r"2 image datasets \(/dark, /flat/data\); name one"):
        read_image(path, KEY)
    assert read_image(f"{path}:/flat/data", KEY).mean() == 2.0
    with pytest.raises(ImageFileError, match="no dataset /nothing in the file"):
        read_image(f"{path}:/nothing", KEY)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ImageFileError, match=rf"^{KEY}: .*absent.npy: no such file \(check"):
        read_image(tmp_path / "absent.npy", KEY)
    (tmp_path / "text.tif").write_text("not a TIFF")
    with pytest.raises(ImageFileError, match=r"text.tif: not a readable HDF5, NPY or TIFF image"):
        read_image(tmp_path / "text.tif", KEY)
    np.save(tmp_path / "line.npy", np.ones(5))
    with pytest.raises(ImageFileError, match=r"shape \(5,\), not an image \(H, W\)"):
        read_image(tmp_path / "line.npy", KEY)

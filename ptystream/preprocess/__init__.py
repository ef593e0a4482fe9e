"""Detector pre-processing (the profile's ``preprocess:`` section), numpy only: the same steps
live, offline and in reprocessing. See :class:`~ptystream.preprocess.detector.Preprocessor`."""

from ptystream.preprocess.detector import FIT_FRAMES, Prepared, PreprocessError, Preprocessor
from ptystream.preprocess.images import ImageFileError, read_image

__all__ = [
    "FIT_FRAMES",
    "ImageFileError",
    "PreprocessError",
    "Prepared",
    "Preprocessor",
    "read_image",
]

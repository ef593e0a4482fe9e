"""Detector pre-processing (the profile's ``preprocess:`` section), numpy only: the same steps
live, offline and in reprocessing. See :class:`~ptystream.preprocess.detector.Preprocessor`."""

from ptystream.preprocess.detector import Prepared, PreprocessError, Preprocessor
from ptystream.preprocess.images import ImageFileError, read_image

__all__ = ["ImageFileError", "PreprocessError", "Prepared", "Preprocessor", "read_image"]

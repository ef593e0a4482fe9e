"""Finished scans: reconstruct a file, and reprocess finished runs (from Tiled) or scan files,
one Dask task each.

``reconstruct`` reconstructs a scan held in memory or a CXI/NPZ file. Reprocessing is split by
side: ``jobs`` selects the inputs on the client and skips those already done with the same
settings; ``task`` is what a worker runs for one input (read, reconstruct, publish a new
version into Tiled or write an HDF5 file; never raises); ``cluster`` fans the jobs out on
Dask; ``report`` summarises (table, contact sheet). May import :mod:`ptystream.engine`,
:mod:`ptystream.store`, :mod:`ptystream.io` and :mod:`ptystream.config`; never
:mod:`ptystream.live`. TensorFlow is imported on the workers only.
"""

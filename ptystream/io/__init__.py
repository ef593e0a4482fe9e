"""Files: scan files read (CXI, NPZ), results written (HDF5), and the PNG summaries of a
reconstruction (matplotlib, imported only when drawing). numpy, h5py and :mod:`ptystream.types`;
nothing of Bluesky, Tiled or TensorFlow.
"""

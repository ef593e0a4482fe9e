"""Readers and writers of scan and result files (CXI, NPZ, HDF5); numpy and h5py only."""

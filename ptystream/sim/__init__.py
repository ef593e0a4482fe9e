"""Simulation: ground truth, scan trajectories, detector noise, ophyd devices and plans.

The numpy parts (`sample`, `trajectories`, `detector`, `problems`) import no bluesky; `devices`
and `plans` do. `problems` builds whole simulated problems (frames, positions and the truth)
without a RunEngine, for the benchmarks and the tests.

May import :mod:`ptystream.types`, :mod:`ptystream.config` and :mod:`ptystream.optics` (and
bluesky, ophyd, h5py where a module simulates a beamline); never TensorFlow or tiled.
"""

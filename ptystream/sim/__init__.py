"""Simulation: ground truth, scan trajectories, detector noise, ophyd devices and plans.

The numpy parts (`sample`, `trajectories`, `detector`, `problems`) import no bluesky; `devices`
and `plans` do. `problems` builds whole simulated problems (frames, positions and the truth)
without a RunEngine, for the benchmarks and the tests.
"""

"""Simulation: ground truth, scan trajectories, detector noise, ophyd devices and plans.

The numpy parts (`sample`, `trajectories`, `detector`) import no bluesky; `devices` and `plans`
do.
"""

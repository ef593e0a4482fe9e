"""A refinement's length in passes or in seconds (:class:`ptystream.engine.schedule.PassBudget`),
on a clock the test drives, so nothing depends on how fast this machine is."""

import pytest

from ptystream.engine import schedule


def test_the_passes_stop_between_steps_when_the_time_is_spent(monkeypatch):
    """With a clock that advances 1 s each time it is read, a 10 s budget is spent after a
    known number of steps, whatever a pass costs: the schedule is the fraction of time."""
    clock = iter(range(1000))
    monkeypatch.setattr(schedule.time, "perf_counter", lambda: float(next(clock)))
    budget = schedule.PassBudget(seconds=10.0)  # made at t = 0
    steps, progress = [], []
    for epoch in budget.passes():  # reads the clock once per pass
        for step in range(4):
            if step and budget.spent:  # once per step after the first
                break
            progress.append(budget.progress(epoch))  # once per step
            steps.append((epoch, step))
    # clock reads: 1 pass check, 2 step, 3-8 the other steps, 9 pass check, 10 step, 11 spent
    assert steps == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    assert progress == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert budget.spent


def test_a_count_of_passes_is_never_spent():
    budget = schedule.PassBudget(epochs=3)
    assert list(budget.passes()) == [0, 1, 2] and not budget.spent
    assert [budget.progress(e) for e in range(3)] == [0.0, 0.5, 1.0]


@pytest.mark.parametrize(
    ("epochs", "seconds", "message"),
    [
        (3, 1.0, "exactly one of epochs and seconds"),
        (None, None, "exactly one of epochs and seconds"),
        (-1, None, "epochs must be >= 0"),
        (None, float("nan"), "seconds must be a finite number"),
        (None, -2.0, "seconds must be a finite number"),
    ],
)
def test_a_bad_budget_is_refused_by_name(epochs, seconds, message):
    with pytest.raises(ValueError, match=message):
        schedule.PassBudget(epochs, seconds)

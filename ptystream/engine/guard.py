"""Guarding a refinement against over-fitting noise and against divergence (numpy only).

*Over-fitting.* On noisy data the misfit keeps falling while the image gets worse: the object
and probe start to fit the noise (measured: |C| 0.97 after 5 passes, 0.91 after 100, read
noise 10 counts). The engines hold out a fixed share of detector pixels, a different set in
each frame (:func:`held_out_pixels`), from the loss the optimiser sees, and measure the misfit on
them: it falls while the model learns the signal and rises once it fits the noise, which the
held-out pixels do not share. :class:`PassGuard` keeps the trained variables of the pass with
the lowest held-out misfit and ends the passes when it has not improved for ``patience`` passes,
putting that best state back: a noise-aware stop that needs no noise level.

*Divergence.* A data misfit that is not finite, above twice the one the refinement began at, or
growing for several passes in a row puts back the last good state and halves the learning
rates, and says so (log and the engine's warnings, published with the result): never a silent
``finished`` of a diverged run. The last good state is the one a pass *began* from when that
pass was judged good: the state a pass ends with may already be broken (a fit that blew up in
the pass's last steps, its mean loss still fine), and putting that back only repeats the
failure (measured: a 50-count scan restored such a state 2250 times, the rates halved to 0).
After :data:`MAX_RESTARTS_IN_A_ROW` restarts without a good pass between them the refinement
gives up at the last good state.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["MAX_RESTARTS_IN_A_ROW", "GuardReport", "LastGood", "PassGuard", "held_out_pixels"]

logger = logging.getLogger(__name__)

#: An engine's trained variables by name, as the engine copies them (numpy arrays, or tensors
#: left on the device): the guard keeps and hands back states without looking inside.
State = dict[str, Any]

#: A rising loss is a divergence once it is this many times its lowest of the refinement.
DIVERGED_FACTOR = 1.5
#: Restarts in a row (no good pass between them; the rates 1/256 of the settings' by then)
#: after which a refinement ends at the last good state.
MAX_RESTARTS_IN_A_ROW = 8
#: Seed of the held-out pixel pattern: the same pixels for a scan whatever the run.
_PATTERN_SEED = 20261206


def held_out_pixels(n: int, every: int) -> np.ndarray:
    """``(n, n)`` int32 phases in ``[0, every)``, shuffled: frame ``j`` holds out the pixels whose
    phase equals ``j % every``, i.e. ``1 / every`` of its pixels, a different set in each of
    ``every`` successive frames, so that over the scan every pixel is fitted in most frames."""
    rng = np.random.default_rng(_PATTERN_SEED)
    phases = np.arange(n * n, dtype=np.int64) % every
    return rng.permutation(phases).reshape(n, n).astype(np.int32)


Verdict = Literal["go on", "stop", "diverged", "give up"]


@dataclass
class GuardReport:
    """What the guard did over a refinement (plain types, for the result's metadata).

    Attributes
    ----------
    best_pass : the pass (from 1) whose state was kept (lowest held-out misfit); 0 if none.
    passes : passes run.
    stopped_early : True when the held-out misfit stopped improving before the passes ran out.
    restarts : times a diverging loss put back the last good state (over the engine's life).
    rate_factor : the factor the learning rates were left at (halved at each restart).
    gave_up : True when a refinement ended at the last good state after
        :data:`MAX_RESTARTS_IN_A_ROW` restarts in a row.
    warnings : one line for each restart.
    """

    best_pass: int = 0
    passes: int = 0
    stopped_early: bool = False
    restarts: int = 0
    rate_factor: float = 1.0
    gave_up: bool = False
    warnings: list[str] = field(default_factory=list)

    def diverged(self, what: str, where: str) -> None:
        """Count a restart: halve :attr:`rate_factor`, log and keep the warning. ``what`` the
        loss was (``"not finite"``, ``"growing"``) and ``where`` (``"pass 3"``)."""
        self.restarts += 1
        self.rate_factor *= 0.5
        message = (
            f"the loss was {what} at {where} (diverging): restored the last good state and "
            f"lowered the learning rates to {self.rate_factor:g} of the settings'"
        )
        logger.warning(message)
        self.warnings.append(message)

    def to_metadata(self) -> dict[str, object]:
        """Plain JSON types."""
        return {
            "best_pass": self.best_pass,
            "passes": self.passes,
            "stopped_early": self.stopped_early,
            "restarts": self.restarts,
            "rate_factor": self.rate_factor,
            "gave_up": self.gave_up,
        }


class LastGood:
    """The state to put back after a divergence: the one the last good pass *began* from.

    :meth:`good` is called with the state a good pass ends with; that state waits until the
    next pass is judged good too (a pass's end may already be broken, its mean loss still
    fine), and :meth:`discard` drops it after a divergence. ``state`` starts as the state to
    fall back on before the first pass (None: none)."""

    def __init__(self, state: State | None = None):
        self.state = state
        self._pending: State | None = None

    def good(self, end: State) -> None:
        """A good pass ended at ``end``: the state it began from is confirmed."""
        if self._pending is not None:
            self.state = self._pending
        self._pending = end

    def discard(self) -> None:
        """A divergence: the end of the last pass is not confirmed."""
        self._pending = None


class PassGuard:
    """Judges each pass of a refinement by its training loss and its held-out misfit.

    The engine calls :meth:`after_pass` with both and ``weights`` (a function returning copies
    of its trained variables); the guard remembers the best and the last good copies and
    answers ``"go on"``, ``"stop"`` (restore :attr:`best` and end), ``"diverged"`` (restore
    :attr:`last_good`, multiply the rates by :attr:`report`'s ``rate_factor`` and go on) or
    ``"give up"`` (restore :attr:`last_good` and end). :attr:`last_good` is the state the last
    good pass began from (its end is kept until the next pass confirms it).
    ``patience`` 0 turns the early stop off (the held-out misfit is still measured).
    ``report`` carries restarts and the rate factor over from earlier refinements (its pass
    counts start again); ``last_good`` is the state to fall back on before the first pass.
    A pass diverged when its loss is not finite, above ``ceiling`` (the engine passes twice the
    loss of its state when the refinement began: a fit worse than where it started), or rising
    for ``growth_passes`` passes to :data:`DIVERGED_FACTOR` times its lowest.
    """

    def __init__(
        self,
        patience: int,
        *,
        report: GuardReport | None = None,
        last_good: State | None = None,
        ceiling: float = math.inf,
        growth_passes: int = 3,
        min_improvement: float = 1e-3,
    ):
        self.patience = patience
        self.ceiling = ceiling
        self.growth_passes = growth_passes
        self.min_improvement = min_improvement
        self.report = report if report is not None else GuardReport()
        self.report.passes, self.report.best_pass, self.report.stopped_early = 0, 0, False
        self.best: State | None = None
        self._last_good = LastGood(last_good)
        self._in_a_row = 0
        self._best_held = math.inf
        self._since_best = 0
        self._losses: list[float] = []

    def after_pass(self, loss: float, held: float, weights, *, judge: bool = True) -> Verdict:
        """The verdict on the pass just run: ``loss`` its data misfit on the fitted pixels (the
        regulariser left out: it grows as the image forms), ``held`` on the held-out ones.
        ``judge`` False while the loss itself changes (a blur shrinking to nothing): only a
        non-finite loss counts, and the pass becomes the last good state."""
        self.report.passes += 1
        if not (math.isfinite(loss) and math.isfinite(held)):
            return self._diverged("not finite")
        if not judge:  # the loss is changing its definition (coarse to fine): compare nothing
            self._good(weights())
            return "go on"
        if loss > self.ceiling:
            start = self.ceiling / 2
            return self._diverged(f"{loss:.3g} (over twice its {start:.3g} at the start)")
        if self._growing(loss):
            return self._diverged("growing")
        self._losses.append(loss)
        state = weights()
        self._good(state)
        if held < self._best_held * (1.0 - self.min_improvement):
            self._best_held, self._since_best = held, 0
            self.best = state
            self.report.best_pass = self.report.passes
            return "go on"
        self._since_best += 1
        if self.patience and self._since_best >= self.patience:
            self.report.stopped_early = True
            logger.info(
                "stopped after pass %d: the held-out misfit has not improved for %d passes; "
                "kept pass %d",
                self.report.passes,
                self._since_best,
                self.report.best_pass,
            )
            return "stop"
        return "go on"

    @property
    def last_good(self) -> State | None:
        """The state the last good pass began from (:class:`LastGood`)."""
        return self._last_good.state

    def _growing(self, loss: float) -> bool:
        """The loss rose in each of the last ``growth_passes`` passes, to more than
        :data:`DIVERGED_FACTOR` times its lowest: a pass's loss also wanders by a few percent
        with the random order of the frames, which is not a divergence."""
        recent = [*self._losses[-self.growth_passes :], loss]
        rising = len(recent) > self.growth_passes and all(
            later > earlier for earlier, later in zip(recent, recent[1:], strict=False)
        )
        return rising and loss > DIVERGED_FACTOR * min(self._losses)

    def _good(self, state: State) -> None:
        self._last_good.good(state)
        self._in_a_row = 0

    def _diverged(self, what: str) -> Verdict:
        self.report.diverged(what, f"pass {self.report.passes}")
        self._losses.clear()
        self._last_good.discard()
        self._in_a_row += 1
        if self._in_a_row >= MAX_RESTARTS_IN_A_ROW:
            self.report.gave_up = True
            message = (
                f"the loss diverged {self._in_a_row} passes in a row: the refinement ended at "
                "the last good state"
            )
            logger.warning(message)
            self.report.warnings.append(message)
            return "give up"
        return "diverged"

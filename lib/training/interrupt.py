"""Stopping a run on request without losing it: SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption)
lets the current step finish, then the run saves ``last.pt`` where it stands and exits."""
import signal
import sys

import torch

from lib.distributed.ranks import reduce_over_ranks

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Raised by the training loop after a finished step when a stop was requested; carries the epoch's
    position: steps done, loss sums so far (device tensor) and images seen."""

    def __init__(self, step, totals, seen):
        super().__init__(f"stopped after step {step}")
        self.step, self.totals, self.seen = step, totals, seen


class StopRequest:
    """Context manager that turns SIGINT / SIGTERM into a flag (truthy once a signal came).

    The first signal restores the previous handlers, so a second one stops the process at once. Under
    torchrun (``dist`` of several ranks) every signal only sets the flag: torchrun passes the signal it gets
    on to every worker, which a Ctrl-C in the terminal has reached already, and that copy must not kill a
    rank while it saves; torchrun kills the workers still there after its ``--shutdown-timeout`` (30 s).
    """

    def __init__(self, dist=None):
        self.signal = None
        self.previous = {}
        self.keep_handlers = dist is not None and dist.world_size > 1
        self.quiet = dist is not None and not dist.is_main

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        self._restore()

    def __bool__(self):
        return self.signal is not None

    def _handle(self, signum, frame):
        if self.signal is not None:  # torchrun's copy of the signal that came
            return
        self.signal = signum
        if not self.keep_handlers:
            self._restore()
        if not self.quiet:
            again = "" if self.keep_handlers else " (send it again to stop at once)"
            print(f"\n{signal.Signals(signum).name}: finishing the current step, then saving last.pt{again}",
                  flush=True)

    def _restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        self.previous = {}


def stopped(log, stop, where, dist):
    """Leave after a stop request, saying how to continue; exit status 128 + the signal number on every rank."""
    number = int(reduce_over_ranks(torch.tensor([stop.signal or 0]), dist, "max"))
    if dist.is_main:
        log.close()
        print(f"stopped by {signal.Signals(number).name} at {where}; {log.checkpoints}/last.pt holds it. "
              f"Continue with the same command and --resume {log.folder}", file=sys.stderr, flush=True)
    raise SystemExit(128 + number)

"""train.nonfinite=skip: halt a run whose updates keep being dropped (train.max_consecutive_skips).

Each step's `finite` flag is read one step late, after the next step was dispatched, so the host never
waits for the device just to count: by then that step has finished and the read costs nothing.
"""

from __future__ import annotations

import jax

from photon_jax.errors import UserError


class SkipStreak:
    def __init__(self, limit: int):
        self.limit = limit  # 0 = never halt
        self._pending = None  # (step, finite flag on the device) of the step not read yet
        self.first = None  # first step of the current run of skipped updates
        self.length = 0

    def push(self, step: int, finite, last_saved: int) -> None:
        """Record step `step`'s flag and check the previous step's; one line (UserError) at the limit.
        last_saved: the step of the last checkpoint (0 = none), which the halt keeps."""
        previous, self._pending = self._pending, (step, finite)
        if previous is not None:
            self._check(*previous, last_saved)

    def flush(self, last_saved: int) -> None:
        """Check the last step's flag (the loop ended)."""
        previous, self._pending = self._pending, None
        if previous is not None:
            self._check(*previous, last_saved)

    def _check(self, step: int, finite, last_saved: int) -> None:
        if bool(jax.device_get(finite)):
            self.first, self.length = None, 0
            return
        self.first = step if self.first is None else self.first
        self.length += 1
        if self.limit and self.length >= self.limit:
            kept = f"the checkpoint of step {last_saved} is kept" if last_saved else "nothing was saved"
            raise UserError(f"steps {self.first}-{step}: {self.length} consecutive non-finite losses or gradients, "
                            f"every update skipped; halting (train.max_consecutive_skips={self.limit}); {kept}")

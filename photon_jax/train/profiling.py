"""jax.profiler traces of chosen training steps (train.profile_steps=START:COUNT).

The trace of steps START .. START+COUNT-1 (and a device memory profile taken at the end of the last
one) is written into the run's TensorBoard directory, where the TensorBoard profile plugin
(tensorboard-plugin-profile) or Perfetto opens it: <workdir>/tensorboard/plugins/profile/<time>/
<host>.xplane.pb, and <workdir>/tensorboard/memory_step<N>.prof (pprof format).
"""

from __future__ import annotations

from pathlib import Path

import jax

from photon_jax.errors import ConfigError


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
    """"START:COUNT" -> (START, COUNT); "" -> None."""
    if not spec:
        return None
    start, sep, count = spec.partition(":")
    if not sep or not start.strip().isdigit() or not count.strip().isdigit() or int(start) < 1 or int(count) < 1:
        raise ConfigError(f"train.profile_steps={spec!r}: expected START:COUNT with START >= 1 and COUNT >= 1")
    return int(start), int(count)


class StepProfiler:
    def __init__(self, spec: str, log_dir: Path):
        self.window = parse_profile_steps(spec)
        self.log_dir = Path(log_dir)
        self.active = False
        self.written: list[Path] = []

    def before(self, step: int) -> None:
        """Call before running step `step` (1-based)."""
        if self.window and step == self.window[0]:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.log_dir))
            self.active = True

    def annotate(self, step: int):
        return jax.profiler.StepTraceAnnotation("train", step_num=step)

    def after(self, step: int, outputs) -> None:
        """Call after step `step`: ends the trace after the window's last step (waiting for its results)."""
        if self.active and step == self.window[0] + self.window[1] - 1:
            jax.block_until_ready(outputs)
            self.stop()
            memory = self.log_dir / f"memory_step{step}.prof"
            jax.profiler.save_device_memory_profile(str(memory))
            self.written.append(memory)

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False

"""Run the real `photon-jax` CLI in a child process, with fault injection, for tests/test_reliability.py.

    python tests/reliability_worker.py [options] -- train --workdir DIR key=value ...

The child compiles exactly what the test process compiles (same XLA flags, inherited from the
test's environment, one CPU device, same jax options), so its programs come from the test's
persistent compilation cache and its numbers can be compared bit for bit with in-process runs.

Options:
  --one-device            use only the first CPU device, like the in-process tests
  --cache DIR             persistent compilation cache directory
  --fast-compile          jax_disable_most_optimizations (what the tests' fast_compile fixture sets)
  --step-delay S          sleep S seconds before each training batch (so a test can kill mid-run)
  --hang-save-step N      the checkpoint of step N never finishes: its background JSON write touches
                          DIR/saving-N and then blocks, so the test can SIGKILL during an async save
  --fail-save-step N      saving step N fails: with --fail-in commit (default) orbax's background write
                          of its JSON items raises, with --fail-in mkdir creating its temporary directory
                          (synchronous, in manager.save) raises; the error is --fail-errno (default: ENOSPC,
                          disk full, for commit; EROFS, read-only disk, for mkdir)
  --compile-delay S       the train step's compile takes S seconds longer (time to signal it mid-compile):
                          DIR/compiling is written when it starts
  --write-pid             write this process's pid to DIR/pid-<PHOTON_PROCESS_ID or 0> (to signal one of several)
  --kill-at-batch N       SIGKILL this process when it fetches batch N (with --kill-process I: only
                          in the process whose PHOTON_PROCESS_ID is I), after writing the time to
                          DIR/killed-<PHOTON_PROCESS_ID or 0>
  --hold-at-batch N       before fetching batch N (started up, compiled), write DIR/holding and wait until
                          DIR/go exists (so a test can load the machine for the steps that follow only)

`compile_cache(dir)` is the in-process side: the tests' programs go to the same cache.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import time
from pathlib import Path


def _parse(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--one-device", action="store_true")
    p.add_argument("--cache", default=None)
    p.add_argument("--fast-compile", action="store_true")
    p.add_argument("--step-delay", type=float, default=0.0)
    p.add_argument("--hang-save-step", type=int, default=None)
    p.add_argument("--fail-save-step", type=int, default=None)
    p.add_argument("--fail-in", choices=["commit", "mkdir"], default="commit")
    p.add_argument("--fail-errno", choices=["ENOSPC", "EROFS"], default=None)
    p.add_argument("--compile-delay", type=float, default=0.0)
    p.add_argument("--write-pid", action="store_true")
    p.add_argument("--kill-at-batch", type=int, default=None)
    p.add_argument("--kill-process", type=int, default=None)
    p.add_argument("--hold-at-batch", type=int, default=None)
    split = argv.index("--")
    return p.parse_args(argv[:split]), argv[split + 1:]


def _workdir(cli_args) -> Path:
    return Path(cli_args[cli_args.index("--workdir") + 1]).resolve()


def _wrap_iterator(delay: float, kill_at: int | None, kill_marker: Path, hold_at: int | None = None,
                   hold_dir: Path | None = None):
    from photon_jax.data.loading import pipeline

    real = pipeline.train_iterator

    def wrapped(*args, **kwargs):
        it = real(*args, **kwargs)
        count = {"n": 0}

        class Iterator:
            def __next__(self):
                count["n"] += 1
                if hold_at is not None and count["n"] == hold_at:
                    (hold_dir / "holding").write_text(str(os.getpid()))
                    while not (hold_dir / "go").exists():
                        time.sleep(0.01)
                if kill_at is not None and count["n"] == kill_at:
                    kill_marker.write_text(repr(time.time()))
                    os.kill(os.getpid(), signal.SIGKILL)
                if delay:
                    time.sleep(delay)
                return next(it)

            def __getattr__(self, name):
                return getattr(it, name)

        return Iterator()

    pipeline.train_iterator = wrapped


def _slow_compile(delay: float, marker: Path) -> None:
    """The train step's compile, then a wait with SIGTERM blocked, as inside XLA's compile (where no Python
    handler runs): the signal is delivered when it returns."""
    from photon_jax.train import session

    real = session.compile_step

    def compile_(*args, **kwargs):
        out = real(*args, **kwargs)
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
        marker.write_text("compiling")
        time.sleep(delay)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
        return out

    session.compile_step = compile_


def _break_save(step: int, hang_marker: Path | None, code: int = errno.ENOSPC) -> None:
    """Step `step`'s JSON items (written by orbax's background commit) hang, or fail with `code`."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as handler

    real = handler.JsonCheckpointHandler._save_fn

    async def save_fn(self, item, directory):
        step_dir = Path(str(directory)).parent
        if step_dir.name.split(".")[0] == str(step):
            if hang_marker is None:
                raise OSError(code, os.strerror(code), str(directory))
            hang_marker.write_text(str(step_dir))
            time.sleep(3600)  # the background commit thread never finishes; the test kills us
        return await real(self, item, directory)

    handler.JsonCheckpointHandler._save_fn = save_fn


@contextlib.contextmanager
def compile_cache(directory):
    """In-process: compiled programs go to (and come from) `directory`, shared with the workers; restored
    afterwards so other test modules compile as before."""
    import jax
    from jax._src import compilation_cache  # reset: the cache is set up once per process otherwise

    old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", old[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
        compilation_cache.reset_cache()


def _fail_mkdir(step: int, code: int = errno.EROFS) -> None:
    from orbax.checkpoint._src.path import atomicity

    real = atomicity.AtomicRenameTemporaryPath.create

    async def create(self, *args, **kwargs):
        if self.get_final().name == str(step):
            raise OSError(code, os.strerror(code), str(self.get()))
        return await real(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.create = create


def main(argv=None) -> int:
    opts, cli_args = _parse(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    if opts.cache:
        jax.config.update("jax_compilation_cache_dir", opts.cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    if opts.fast_compile:
        jax.config.update("jax_disable_most_optimizations", True)
    if opts.one_device:
        jax.devices = lambda *a: jax.local_devices()[:1]
    kill_at = opts.kill_at_batch
    if opts.kill_process is not None and os.environ.get("PHOTON_PROCESS_ID") != str(opts.kill_process):
        kill_at = None
    if opts.step_delay or kill_at is not None or opts.hold_at_batch is not None:
        marker = _workdir(cli_args) / f"killed-{os.environ.get('PHOTON_PROCESS_ID', '0')}"
        _wrap_iterator(opts.step_delay, kill_at, marker, opts.hold_at_batch, _workdir(cli_args))
    if opts.write_pid:
        _workdir(cli_args).mkdir(parents=True, exist_ok=True)
        (_workdir(cli_args) / f"pid-{os.environ.get('PHOTON_PROCESS_ID', '0')}").write_text(str(os.getpid()))
    if opts.compile_delay:
        _slow_compile(opts.compile_delay, _workdir(cli_args) / "compiling")
    if opts.hang_save_step is not None:
        _break_save(opts.hang_save_step, _workdir(cli_args) / f"saving-{opts.hang_save_step}")
    if opts.fail_save_step is not None:
        default = "ENOSPC" if opts.fail_in == "commit" else "EROFS"
        code = getattr(errno, opts.fail_errno or default)
        if opts.fail_in == "commit":
            _break_save(opts.fail_save_step, None, code)
        else:
            _fail_mkdir(opts.fail_save_step, code)

    from photon_jax.cli.main import main as cli_main

    return cli_main(cli_args)


if __name__ == "__main__":
    sys.exit(main())

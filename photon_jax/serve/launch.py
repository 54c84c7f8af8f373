"""Build a server from a loaded run and run it: pool size from the KV budget, engine thread, uvicorn.

Several processes (one mesh over all their devices): process 0 does all of this; the others build the
same programs and run them in lockstep with process 0 (serve/lockstep.py) until it stops.

An engine failure: every request in flight and waiting ends with an error, /health and new requests get
503, and FAILED_EXIT_AFTER_S later the process exits 1 (a supervisor restarts it).

SIGTERM / SIGINT: the engine stops admitting (503), the requests in flight get `grace_s` to finish
(the rest end with finish_reason "abort"), then uvicorn exits and the process returns 0. A second
signal exits at once.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

import jax

from photon_jax.errors import UserError
from photon_jax.generation.api import _as_params, check_mode
from photon_jax.model.convert import unrolled
from photon_jax.serve import pool as pool_lib
from photon_jax.serve.app import Served, create_app
from photon_jax.serve.engine import Engine
from photon_jax.serve.lockstep import LockstepPrograms, replicated
from photon_jax.serve.metrics import Metrics
from photon_jax.serve.options import DEFAULT_KV_BUDGET_GIB, GIB, ServeOptions
from photon_jax.serve.prompt_logprobs import PromptScorer
from photon_jax.serve.text import TokenIdText
from photon_jax.sharding import strip_boxes

FAILED_EXIT_AFTER_S = 2.0


def plan_slots(params, cfg, mode: str, max_context: int, budget_gib: float | None, slots: int | None):
    """(slots, bytes per slot): --slots as given, else as many as the budget holds."""
    per_slot = pool_lib.bytes_per_slot(params, cfg, mode, max_context)
    if slots is not None:
        if slots < 1:
            raise UserError(f"--slots must be >= 1, got {slots}")
        return slots, per_slot
    budget = (DEFAULT_KV_BUDGET_GIB if budget_gib is None else budget_gib) * GIB
    n = int(budget // per_slot)
    if n < 1:
        raise UserError(f"--kv-budget-gib {budget / GIB:g} holds no slot: one slot of {max_context} tokens in mode "
                        f"{mode} needs {per_slot / GIB:.4f} GiB")
    return n, per_slot


def build_programs(model_cfg, params, opts: ServeOptions, host=None) -> pool_lib.Programs:
    """The pool's programs (every process builds them; `host`: pool.Programs, several processes)."""
    mode = check_mode(model_cfg, opts.mode)
    if opts.max_context < 2:
        raise UserError(f"--max-context must be >= 2, got {opts.max_context}")
    cfg, params = unrolled(model_cfg, strip_boxes(_as_params(params)))  # decoding runs unrolled (model/convert.py)
    slots, _ = plan_slots(params, cfg, mode, opts.max_context, opts.kv_budget_gib, opts.slots)
    spec = pool_lib.PoolSpec(cfg, mode, slots, pool_lib.capacity(cfg, opts.max_context))
    return pool_lib.Programs(spec, params, host, opts.decode_steps, opts.admit_batch)


def build_engine(model_cfg, params, eos_id, opts: ServeOptions, metrics=None, programs=None,
                 on_failure=None) -> Engine:
    programs = programs or build_programs(model_cfg, params, opts)
    engine = Engine(programs, eos_id, opts.max_queue, opts.align, metrics, on_failure)
    engine.max_context = opts.max_context
    if metrics is not None:
        metrics.bind(engine)
    if opts.warm_up:
        engine.warm_up()
    return engine.start()


def serve(loaded, opts: ServeOptions, host: str, port: int, model_name: str, api_key: str | None,
          grace_s: float = 30.0, say=print) -> int:
    import uvicorn

    t0 = time.perf_counter()
    host_sharding = None
    if jax.process_count() > 1:  # process 0 reads what every program returns: replicated on the mesh
        host_sharding = replicated(loaded.params)
        if host_sharding is None:
            raise UserError("multi-process serving needs the params on a mesh (NamedSharding)")
    programs = build_programs(loaded.cfg.model, loaded.params, opts, host_sharding)
    scorer = None
    if not isinstance(loaded.tokenizer, TokenIdText):
        scorer = PromptScorer(loaded.cfg.model, strip_boxes(_as_params(loaded.params)), opts.max_context,
                              host_sharding)
    mirror = None
    if host_sharding is not None:
        mirror = LockstepPrograms(programs, scorer)
        if jax.process_index() != 0:
            return _follow(mirror, say)
        programs = mirror.start_keepalive()
    error = None
    try:
        metrics = Metrics()
        holder = {}  # the uvicorn server, once made: an engine failure stops it (exit 1, for a supervisor)
        engine = build_engine(loaded.cfg.model, loaded.params, loaded.tokenizer.eos_id, opts, metrics, programs,
                              on_failure=lambda e: _stop_soon(holder))
        say(f"photon-jax serve: {model_name} ({engine.spec.mode}), {engine.spec.slots} slots of {opts.max_context} "
            f"tokens, {engine.slot_bytes:,} bytes per slot, {engine.compiled_programs()} programs compiled in "
            f"{time.perf_counter() - t0:.1f}s" + (f", {jax.process_count()} processes" if mirror else ""))
        served = Served(engine, loaded.tokenizer, loaded.cfg.model.vocab_size, model_name, opts.max_context, metrics,
                        api_key, opts.request_timeout_s, scorer)
        config = uvicorn.Config(create_app(served), host=host, port=port, log_level="warning",
                                timeout_graceful_shutdown=5)
        server = holder["server"] = _DrainingServer(config, engine, grace_s)
        say(f"listening on http://{host}:{port}/v1", flush=True)
        server.run()
        engine.stop()
        if engine.error is not None:
            say(f"photon-jax serve: the engine failed: {type(engine.error).__name__}: {engine.error}",
                file=sys.stderr, flush=True)
            return 1
    except BaseException as e:  # the other processes stop with the same one line
        if isinstance(e, UserError):
            error = str(e)
        elif isinstance(e, SystemExit):  # uvicorn exits so when it cannot bind
            error = f"process 0 exited with status {e.code}"
        else:
            error = f"process 0 failed: {type(e).__name__}: {e}"
        raise
    finally:
        if mirror is not None:
            mirror.stop(error)  # always: the others wait for it
    say("photon-jax serve: stopped", flush=True)
    return 0


def _stop_soon(holder: dict, after_s: float = FAILED_EXIT_AFTER_S):
    """After an engine failure: answer 503 for a moment (health checks see it), then stop the server."""
    def stop():
        time.sleep(after_s)
        if "server" in holder:
            holder["server"].should_exit = True
    threading.Thread(target=stop, name="photon-serve-failed", daemon=True).start()


def _follow(mirror: LockstepPrograms, say) -> int:
    """Processes other than 0: run process 0's programs until it stops. Their first SIGTERM / SIGINT is
    ignored: the launcher or scheduler signals process 0 too, which drains and then stops them."""
    def ignore(sig, frame):
        say(f"photon-jax serve: process {jax.process_index()}: signal {sig}: waiting for process 0 to stop",
            file=sys.stderr, flush=True)
        signal.signal(sig, signal.SIG_DFL)  # a second one exits at once
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, ignore)
    say(f"photon-jax serve: process {jax.process_index()} of {jax.process_count()} follows process 0", flush=True)
    mirror.follow()
    say(f"photon-jax serve: process {jax.process_index()}: stopped", flush=True)
    return 0


class _DrainingServer:
    """uvicorn.Server whose first SIGTERM / SIGINT drains the engine before the server exits."""

    def __new__(cls, config, engine, grace_s):
        import uvicorn

        class Server(uvicorn.Server):
            draining = False

            def handle_exit(self, sig, frame):
                if self.draining:
                    return super().handle_exit(sig, frame)
                self.draining = True
                print(f"photon-jax serve: signal {sig}: draining (grace {grace_s:g}s)", file=sys.stderr, flush=True)
                threading.Thread(target=self._drain, daemon=True).start()

            def _drain(self):
                engine.drain(grace_s)
                time.sleep(0.5)  # the last events reach their responses
                self.should_exit = True

        return Server(config)

"""`photon-jax serve`: an OpenAI-compatible completions server over a trained run (photon_jax/serve/)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from photon_jax import distributed
from photon_jax.cli.common import add_mesh_flag, add_overrides, parse_mesh
from photon_jax.errors import UserError
from photon_jax.generation.api import ALL_MODES
from photon_jax.serve.options import DEFAULT_KV_BUDGET_GIB, ServeOptions

DEFAULTS = ServeOptions()


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a trained run over HTTP (OpenAI /v1/completions)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="the training run directory")
    src.add_argument("--preset", help="serve a preset's random weights instead (benchmarks: prompts as token ids, "
                                      "text is the ids, no EOS)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    add_overrides(p, " (applied to the run's saved config, as for eval / generate; or to the preset)")
    distributed.add_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--mode", default=None, choices=ALL_MODES,
                   help="generation mode (default: hiergen for PHOTON, which is exact; vanilla for vanilla models)")
    p.add_argument("--max-context", type=int, default=DEFAULTS.max_context,
                   help=f"token capacity of every slot, prompt + completion (default {DEFAULTS.max_context})")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--kv-budget-gib", type=float, default=None,
                      help=f"memory for the slot pool; slots = budget / bytes of one slot in the mode "
                           f"(default {DEFAULT_KV_BUDGET_GIB:g})")
    size.add_argument("--slots", type=int, default=None, help="a fixed number of slots instead of a budget")
    p.add_argument("--served-model-name", default=None, help="the model name clients send (default: the run's name)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 (default: none)")
    p.add_argument("--max-queue", type=int, default=DEFAULTS.max_queue,
                   help=f"requests that may wait beyond the free slots before 429 (default {DEFAULTS.max_queue})")
    p.add_argument("--request-timeout", type=float, default=DEFAULTS.request_timeout_s,
                   help=f"seconds a request may take before it is cut (default {DEFAULTS.request_timeout_s:g})")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds in-flight requests get to finish after SIGTERM/SIGINT (default 30)")
    p.add_argument("--decode-steps", type=int, default=DEFAULTS.decode_steps,
                   help=f"most decode steps per device call when no request waits to join (tokens stream in groups "
                        f"of up to this many; default {DEFAULTS.decode_steps})")
    p.add_argument("--admit-batch", type=int, default=DEFAULTS.admit_batch,
                   help=f"most waiting requests prefilled by one insert call (default {DEFAULTS.admit_batch})")
    p.add_argument("--no-align", action="store_true",
                   help="admit at any phase of the meta-context (default: aligned slots, docs/serving.md)")
    p.add_argument("--harness-tokenizer", default=None, metavar="DIR",
                   help="write the tokenizer directory lm-evaluation-harness's local-completions model scores "
                        "through this server with (docs/serving.md), then serve")
    add_mesh_flag(p, "the saved mesh; same as mesh.* overrides")
    p.set_defaults(run=run)


def run(args) -> int:
    from photon_jax.runs.workdir import load_run

    try:
        from photon_jax.serve.launch import serve
    except ImportError as e:
        raise UserError(f"photon-jax serve needs the [serve] extra ({e}): pip install 'photon-jax[serve]'") from e

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in [1, 65535], got {args.port}")
    if args.kv_budget_gib is not None and args.kv_budget_gib <= 0:
        raise UserError(f"--kv-budget-gib must be > 0, got {args.kv_budget_gib}")
    if args.max_queue < 0 or (args.request_timeout is not None and args.request_timeout <= 0) or args.grace < 0:
        raise UserError("--max-queue and --grace must be >= 0, --request-timeout > 0")
    if args.decode_steps < 1 or args.admit_batch < 1:
        raise UserError(f"--decode-steps and --admit-batch must be >= 1, got {args.decode_steps} and "
                        f"{args.admit_batch}")
    distributed.initialize_from_args(args)  # several processes: process 0 serves, the others follow
    if args.preset:
        loaded = _random_weights(args.preset, args.overrides, parse_mesh(args.mesh))
    else:
        loaded = load_run(args.workdir, step=args.step, mesh_cfg=parse_mesh(args.mesh), overrides=args.overrides)
    if args.harness_tokenizer:
        from photon_jax.serve.harness_tokenizer import write_harness_tokenizer

        where = write_harness_tokenizer(loaded.tokenizer, args.harness_tokenizer, loaded.cfg.data.seq_len + 1)
        print(f"harness tokenizer: {where} (local-completions: add_bos_token=True, "
              f"max_length={loaded.cfg.data.seq_len + 1})", flush=True)
    opts = ServeOptions(mode=args.mode, max_context=args.max_context, kv_budget_gib=args.kv_budget_gib,
                        slots=args.slots, max_queue=args.max_queue, align=not args.no_align,
                        decode_steps=args.decode_steps, admit_batch=args.admit_batch,
                        request_timeout_s=args.request_timeout)
    return serve(loaded, opts, args.host, args.port, args.served_model_name or loaded.cfg.name, args.api_key,
                 grace_s=args.grace)


def _random_weights(preset: str, overrides, mesh_cfg):
    import jax

    from photon_jax.bench.models import random_params
    from photon_jax.config import load_config
    from photon_jax.runs.workdir import place_params
    from photon_jax.serve.text import TokenIdText

    cfg = load_config(preset=preset, overrides=overrides)
    if mesh_cfg is not None:
        cfg = dataclasses.replace(cfg, mesh=mesh_cfg)
    params = random_params(cfg.model)
    if jax.process_count() > 1:  # each process drew the same values (same key): spread them as a run loads
        params = place_params(cfg, params)
    return SimpleNamespace(cfg=cfg, params=params, tokenizer=TokenIdText())

"""`photon-jax train`: train a model (default: photon-tiny on the bundled Shakespeare corpus).

`--dry-run` lowers and compiles the train step for the configured mesh without allocating
state or preparing data, and prints parameter, optimizer and activation memory per device, the
collectives of the compiled step against the analytic floor, and XLA's involuntary rematerializations;
`--target gpu|tpu` compiles that platform's code path instead (docs/scale-out.md).
Multi-process runs: see photon_jax/distributed.py and launch/README.md.
"""

from __future__ import annotations

from photon_jax import distributed
from photon_jax.cli.common import (
    add_config_args,
    add_json_flag,
    add_mesh_flag,
    config_from_args,
    default_workdir,
    print_json,
    with_mesh,
)
from photon_jax.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train (resumes automatically from --workdir)")
    add_config_args(p, default_preset="photon-tiny")
    p.add_argument("--workdir", default=None, help="run directory (default: runs/<preset name>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    add_json_flag(p, "the final summary (or the --dry-run report)")
    p.add_argument("--dry-run", action="store_true",
                   help="compile the train step for the mesh and print memory and collectives per device; no data, "
                        "no state")
    p.add_argument("--target", choices=("cpu", "gpu", "tpu"), default=None,
                   help="with --dry-run: compile the code path of this platform on the devices at hand (default: "
                        "theirs), so a CPU box plans an accelerator run's memory and communication")
    p.add_argument("--topology", default=None, metavar="NAME",
                   help="with --dry-run: compile for this accelerator with its real compiler, no device needed: a "
                        "TPU slice (v5e:4x4, v5p:2x2x2, v6e:16x16, ...) or GPUs (h100:8, h200:64, a100:16); the mesh "
                        "spans its devices. Needs the compilers of scripts/setup_aot.sh (docs/aot.md)")
    add_mesh_flag(p, "the config's mesh.*; the config's logical rules are kept")
    distributed.add_arguments(p)
    p.set_defaults(run=run, host_allocator=True)  # a train-step loop (photon_jax/host_allocator.py)


def run(args) -> int:
    cfg = with_mesh(config_from_args(args), args.mesh)  # bad input fails before any process joins a run
    if args.target and not args.dry_run:
        raise UserError("--target needs --dry-run (a real run trains on the devices it has)")
    if args.topology:
        if not args.dry_run:
            raise UserError("--topology needs --dry-run (it compiles for devices this machine does not have)")
        if args.target:
            raise UserError("--topology and --target exclude each other (the topology's platform is the target)")
        from photon_jax.scaleout import topology

        topology.parse(args.topology)  # a bad name fails before jax starts
        topology.use_cpu_backend()
    else:
        distributed.initialize_from_args(args)
    if args.dry_run:
        from photon_jax.scaleout.dry_run import describe_dry_run, dry_run

        report = dry_run(cfg, target=args.target, topology=args.topology)
        if distributed.is_main_process():
            print_json(report) if args.json else print(describe_dry_run(report))
        return 0

    from photon_jax.train.loop import train

    summary = train(cfg, args.workdir or default_workdir(cfg.name), quiet=args.quiet)
    if not distributed.is_main_process():
        return 0
    if args.json:
        print_json(summary)
    elif summary["validation"]:
        v = summary["validation"]
        print(f"done: step {summary['step']}, validation loss {v['token_loss']:.4f}, ppl {v['perplexity']:.2f}, "
              f"bits/byte {v.get('bits_per_byte', float('nan')):.4f} -> {summary['workdir']}")
    return 0

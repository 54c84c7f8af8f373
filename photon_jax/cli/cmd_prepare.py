"""`photon-jax prepare`: read a corpus, train (or load) a tokenizer, write token shards + manifest."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from photon_jax.cli.common import add_config_args, add_json_flag, config_from_args, default_workdir, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser("prepare", help="tokenize a corpus into train/validation shards")
    add_config_args(p, default_preset="photon-tiny")
    p.add_argument("--corpus", default=None,
                   help="'shakespeare', or comma-separated files / directories / globs of .txt, .jsonl, .jsonl.gz, "
                        ".jsonl.zst, .parquet, or a datasets save_to_disk dir (default: data.corpus)")
    p.add_argument("--text-field", default=None,
                   help="JSONL key / parquet column of the text (default: data.text_field)")
    p.add_argument("--out", default=None,
                   help="output data dir (default: where `train` with the same preset and overrides reads it: "
                        "data.data_dir, else <workdir>/data)")
    p.add_argument("--workdir", default=None, help="the run directory train will use (default: runs/<preset name>)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="tokenizer size to train, or that --tokenizer must have (0 = any) "
                        "(default: data.vocab_size, else model.vocab_size)")
    p.add_argument("--tokenizer", default=None,
                   help="use this SentencePiece .model or Hugging Face tokenizer.json instead of training one")
    p.add_argument("--validation-fraction", type=float, default=None,
                   help="share of documents held out (default: data.validation_fraction)")
    p.add_argument("--seed", type=int, default=None, help="seed of the train/validation split (default: data.seed)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes tokenizing work units in parallel (default: data.prepare_workers; 0 = one per core)")
    p.add_argument("--unit-mb", type=float, default=None,
                   help="input MB per work unit, the grain of parallelism and of resuming (default: "
                        "data.prepare_unit_mb, 64)")
    p.add_argument("--process-index", type=int, default=0,
                   help="this process in a multi-host prepare into a shared --out (each takes every N-th unit; "
                        "process 0 merges)")
    p.add_argument("--process-count", type=int, default=1, help="processes of a multi-host prepare")
    p.add_argument("--force", action="store_true", help="replace an existing data dir prepared from other inputs")
    add_json_flag(p, "the manifest")
    p.set_defaults(run=run)


_QUIET_SECONDS, _EVERY_SECONDS = 3.0, 10.0


def _progress():
    """Progress lines on stderr for long preparations only: nothing in the first seconds, then at most one
    line every few seconds (a quick prepare, or one that fails on bad input, prints nothing but its result)."""
    start = last = time.monotonic()

    def say(message: str) -> None:
        nonlocal last
        now = time.monotonic()
        if now - start >= _QUIET_SECONDS and now - last >= _EVERY_SECONDS:
            print(message, file=sys.stderr, flush=True)
            last = now

    return say


def run(args) -> int:
    from photon_jax.data.manifest import MANIFEST_FILE
    from photon_jax.data.preparation.prepare import prepare
    from photon_jax.data.preparation.stop import Stopped
    from photon_jax.errors import UserError
    from photon_jax.runs.workdir import data_dir_for

    cfg = config_from_args(args)
    changes = {key: value for key, value in (("corpus", args.corpus), ("tokenizer", args.tokenizer),
                                             ("validation_fraction", args.validation_fraction),
                                             ("seed", args.seed), ("text_field", args.text_field))
               if value is not None}
    data = dataclasses.replace(cfg.data, **changes)
    if not 0.0 <= data.validation_fraction < 1.0:
        raise UserError(f"--validation-fraction must be in [0, 1), got {data.validation_fraction}")
    vocab = args.vocab_size if args.vocab_size is not None else (data.vocab_size or cfg.model.vocab_size)
    if vocab < 0 or (vocab == 0 and not data.tokenizer):
        raise UserError(f"--vocab-size must be > 0, got {vocab}")
    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    unit_mb = data.prepare_unit_mb if args.unit_mb is None else args.unit_mb
    if not unit_mb > 0:
        raise UserError(f"--unit-mb must be > 0, got {args.unit_mb}")
    if args.process_count < 1 or not 0 <= args.process_index < args.process_count:
        raise UserError(f"--process-index {args.process_index} is not in [0, --process-count {args.process_count})")
    out = args.out or data_dir_for(cfg, Path(args.workdir or default_workdir(cfg.name)))
    say = (lambda message: None) if args.json else _progress()
    try:
        manifest = prepare(data, out, vocab, overwrite=args.force, workers=args.workers,
                           unit_bytes=max(1, int(unit_mb * (1 << 20))), process_index=args.process_index,
                           process_count=args.process_count, say=say)
    except Stopped as stopped:  # SIGTERM: exit 0 (an orderly stop); Ctrl-C: 130
        print(f"photon-jax: {stopped.line()}", file=sys.stderr)
        return stopped.exit_code
    if not manifest.get("merged", True):
        print(f"process {args.process_index}: tokenized {manifest['units']} work units in "
              f"{manifest['seconds']:.1f} s; process 0 merges")
        return 0
    if args.json:
        print_json(manifest)
        return 0
    verb = "reused" if manifest["reused"] else "prepared"
    print(f"{verb} {data.corpus}: {manifest['documents']} documents in {manifest['units']} work units, "
          f"vocab {manifest['vocab_size']} (eos {manifest['eos_id']}), {manifest['seconds']:.1f} s")
    if not manifest["tokenizer"]["bytes_exact"]:
        print(f"  note: for {manifest['tokenizer']['byte_mismatch_documents']} documents the tokens' byte lengths "
              "do not add up to the text's bytes (the tokenizer normalizes text): bits per byte are approximate")
    for name, split in manifest["splits"].items():
        ratio = split["utf8_bytes"] / split["tokens"] if split["tokens"] else 0.0
        print(f"  {name:<10} {split['documents']:>7,} documents {split['tokens']:>12,} tokens "
              f"{split['utf8_bytes']:>13,} bytes  ({ratio:.2f} bytes/token)")
    print(f"manifest: {Path(out).expanduser().absolute() / MANIFEST_FILE}")
    return 0

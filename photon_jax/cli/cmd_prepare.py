"""`photon-jax prepare`: read a corpus, train (or load) a tokenizer, write token shards + manifest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from photon_jax.cli.common import add_config_args, add_json_flag, config_from_args, default_workdir, print_json


def register(subparsers) -> None:
    p = subparsers.add_parser("prepare", help="tokenize a corpus into train/validation shards")
    add_config_args(p, default_preset="photon-tiny")
    p.add_argument("--corpus", default=None, help="'shakespeare', a text file, a directory of .txt or a .jsonl "
                                                  "(default: data.corpus)")
    p.add_argument("--out", default=None,
                   help="output data dir (default: where `train` with the same preset and overrides reads it: "
                        "data.data_dir, else <workdir>/data)")
    p.add_argument("--workdir", default=None, help="the run directory train will use (default: runs/<preset name>)")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="tokenizer size to train, or that --tokenizer must have (0 = any) "
                        "(default: data.vocab_size, else model.vocab_size)")
    p.add_argument("--tokenizer", default=None, help="use this SentencePiece .model instead of training one")
    p.add_argument("--validation-fraction", type=float, default=None,
                   help="share of documents held out (default: data.validation_fraction)")
    p.add_argument("--seed", type=int, default=None, help="seed of the train/validation split (default: data.seed)")
    p.add_argument("--force", action="store_true", help="replace an existing data dir prepared from other inputs")
    add_json_flag(p, "the manifest")
    p.set_defaults(run=run)


def run(args) -> int:
    from photon_jax.data.prepare import MANIFEST_FILE, prepare
    from photon_jax.errors import UserError
    from photon_jax.runs.workdir import data_dir_for

    cfg = config_from_args(args)
    changes = {key: value for key, value in (("corpus", args.corpus), ("tokenizer", args.tokenizer),
                                             ("validation_fraction", args.validation_fraction),
                                             ("seed", args.seed)) if value is not None}
    data = dataclasses.replace(cfg.data, **changes)
    if not 0.0 <= data.validation_fraction < 1.0:
        raise UserError(f"--validation-fraction must be in [0, 1), got {data.validation_fraction}")
    vocab = args.vocab_size if args.vocab_size is not None else (data.vocab_size or cfg.model.vocab_size)
    if vocab < 0 or (vocab == 0 and not data.tokenizer):
        raise UserError(f"--vocab-size must be > 0, got {vocab}")
    out = args.out or data_dir_for(cfg, Path(args.workdir or default_workdir(cfg.name)))
    manifest = prepare(data, out, vocab, overwrite=args.force)
    if args.json:
        print_json(manifest)
        return 0
    verb = "reused" if manifest["reused"] else "prepared"
    print(f"{verb} {data.corpus}: {manifest['documents']} documents, vocab {manifest['vocab_size']} "
          f"(eos {manifest['eos_id']}), {manifest['seconds']:.1f} s")
    for name, split in manifest["splits"].items():
        ratio = split["utf8_bytes"] / split["tokens"] if split["tokens"] else 0.0
        print(f"  {name:<10} {split['documents']:>7,} documents {split['tokens']:>12,} tokens "
              f"{split['utf8_bytes']:>13,} bytes  ({ratio:.2f} bytes/token)")
    print(f"manifest: {Path(out).expanduser().absolute() / MANIFEST_FILE}")
    return 0

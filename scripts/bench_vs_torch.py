"""The vanilla train step against a same-shape PyTorch LLaMA (transformers LlamaForCausalLM), interleaved.

A benchmark script, not a test (no thresholds): it times photon-jax's real train step (bench.train_bench,
the step training runs: AdamW, clipping, the loss) and the usual PyTorch training step of
LlamaForCausalLM with the same shape (layers, width, FFN, heads, vocabulary, untied head, sequence, batch;
SDPA attention; torch.optim.AdamW, clip_grad_norm_), each side in a fresh process with the same thread
count, alternating sides for --rounds rounds. Reported per side: the median step time over the rounds'
medians, tokens/s, and the ratio photon-jax / torch (> 1 = we are faster). The two sides need not share an
interpreter: torch and transformers are not photon-jax dependencies, so --torch-python may point at
another environment's python.

    python scripts/bench_vs_torch.py --torch-python /path/to/torch-env/bin/python --rounds 3 \
        --jax 'default' --jax 'unrolled|model.scan_unroll=8' \
        --jax 'unrolled-no-ynn|model.scan_unroll=8|--xla_cpu_experimental_ynn_fusion_type=' --json-file r.json

Each --jax is NAME[|OVERRIDES (space-separated)[|XLA_FLAGS[|CHECKOUT[|ENV]]]]: one photon-jax side; CHECKOUT
times another photon-jax source tree instead of this one (a `git worktree add /tmp/before HEAD~1`), so a
change is measured before and after in the same interleaved run; ENV adds space-separated KEY=VALUE pairs to
that side's environment (PHOTON_HOST_ALLOCATOR=system: glibc's malloc defaults, photon_jax/host_allocator.py).
The photon-jax side applies the host allocator settings as the CLI does; torch runs as it comes. Torch runs in fp32 (its
CPU default); photon-jax in the preset's model.dtype unless an override says (parameters and optimizer state
are fp32 on both sides).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def thread_env(threads: int, xla_flags: str = "", repo: str = REPO) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), JAX_PLATFORMS="cpu",
               PYTHONPATH=repo + os.pathsep + env.get("PYTHONPATH", ""))
    env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), xla_flags]).strip()
    return env


# ---- one side, in its own process ---------------------------------------------------------------------------

def shape_of(preset: str, overrides: list[str]) -> dict:
    from photon_jax.config import load_config
    cfg = load_config(preset=preset, overrides=overrides)
    m = cfg.model
    if m.family != "vanilla":
        raise SystemExit(f"error: --preset {preset} is a {m.family} model; the torch reference is a vanilla LLaMA")
    return {"layers": m.num_layers, "width": m.width, "ffn": m.ffn_width, "heads": m.num_heads,
            "kv_heads": m.kv_heads, "vocab": m.vocab_size, "seq": cfg.data.seq_len, "batch": cfg.train.batch_size,
            "rope_theta": m.rope_theta, "eps": m.norm_eps, "tied": m.tie_embeddings, "lr": cfg.train.learning_rate,
            "clip": cfg.train.grad_clip, "weight_decay": cfg.train.weight_decay, "b1": cfg.train.b1,
            "b2": cfg.train.b2}


def run_jax(preset: str, overrides: list[str], steps: int, warmup: int) -> dict:
    import photon_jax
    package = os.path.dirname(os.path.abspath(photon_jax.__file__))
    allocator = "glibc defaults (checkout predates host_allocator)"
    if os.path.isfile(os.path.join(package, "host_allocator.py")):  # as the CLI does, before JAX starts
        from photon_jax import host_allocator
        allocator = host_allocator.configure()
    from photon_jax.bench.train_bench import bench_one
    from photon_jax.config import load_config
    cfg = load_config(preset=preset, overrides=overrides)
    run = bench_one(cfg, steps, warmup)
    return {"step_time_s": run["step_time_s"], "step_times_s": run["step_times_s"], "final_loss": run["final_loss"],
            "source": os.path.dirname(os.path.dirname(os.path.abspath(photon_jax.__file__))), "allocator": allocator}


def run_torch(shape: dict, threads: int, steps: int, warmup: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["width"], intermediate_size=shape["ffn"],
                         num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                         num_key_value_heads=shape["kv_heads"], max_position_embeddings=shape["seq"],
                         rms_norm_eps=shape["eps"], rope_theta=shape["rope_theta"],
                         tie_word_embeddings=shape["tied"], attention_bias=False, mlp_bias=False)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=shape["lr"], betas=(shape["b1"], shape["b2"]),
                            weight_decay=shape["weight_decay"])
    tokens = torch.randint(0, shape["vocab"], (shape["batch"], shape["seq"]))

    def step():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        if shape["clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), shape["clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    for _ in range(warmup):
        step()
    times, loss = [], float("nan")
    for _ in range(steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    return {"step_time_s": statistics.median(times), "step_times_s": times, "final_loss": loss,
            "torch": torch.__version__, "params": sum(p.numel() for p in model.parameters())}


# ---- the driver ---------------------------------------------------------------------------------------------

def parse_env(text: str, flag: str) -> dict:
    pairs = [kv.partition("=") for kv in text.split()]
    if any(not k or not sep for k, sep, _ in pairs):
        raise SystemExit(f"error: {flag}: environment {text!r} is not space-separated KEY=VALUE pairs")
    return {k: v for k, _, v in pairs}


def parse_jax_side(spec: str) -> tuple[str, list[str], str, str, dict]:
    name, overrides, flags, checkout, env = (spec.split("|") + ["", "", "", ""])[:5]
    if not name or spec.count("|") > 4:
        raise SystemExit(f"error: --jax {spec!r}: expected NAME[|OVERRIDES[|XLA_FLAGS[|CHECKOUT[|ENV]]]]")
    checkout = os.path.abspath(checkout) if checkout else REPO
    if not os.path.isfile(os.path.join(checkout, "photon_jax", "__init__.py")):
        raise SystemExit(f"error: --jax {spec!r}: {checkout} is not a photon-jax checkout (no photon_jax/__init__.py)")
    return name, overrides.split(), flags, checkout, parse_env(env, f"--jax {spec!r}")


def side(python: str, args: list[str], threads: int, xla_flags: str = "", checkout: str = REPO,
         extra_env: dict | None = None) -> dict:
    env = dict(thread_env(threads, xla_flags, checkout), **(extra_env or {}))
    proc = subprocess.run([python, os.path.abspath(__file__), *args], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"error: the {args[args.index('--side') + 1]} side failed: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="vanilla-tiny")
    p.add_argument("--torch-python", default=sys.executable, help="python with torch + transformers")
    p.add_argument("--jax", action="append", default=[], metavar="NAME|OVERRIDES|XLA_FLAGS|CHECKOUT|ENV",
                   help="a photon-jax side (repeatable; default: one side with the preset as it is)")
    p.add_argument("--torch-env", default="", metavar="'KEY=VALUE ...'",
                   help="also time torch with these environment variables, as side torch+env")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json-file")
    p.add_argument("--side", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="config overrides for every side (and the torch shape)")
    a = p.parse_args(argv)

    if a.side:  # child: one measurement, one JSON line on stdout
        kind, *rest = a.side
        if kind == "jax":
            out = run_jax(a.preset, a.overrides, a.steps, a.warmup)
        else:
            out = run_torch(json.loads(rest[0]), a.threads, a.steps, a.warmup)
        print(json.dumps(out))
        return 0

    jax_sides = [parse_jax_side(s) for s in a.jax or ["default"]]
    torch_env = parse_env(a.torch_env, "--torch-env") if a.torch_env else None
    shape = shape_of(a.preset, a.overrides)
    common = ["--preset", a.preset, "--threads", str(a.threads), "--steps", str(a.steps), "--warmup", str(a.warmup)]
    samples: dict[str, list[dict]] = {"torch": [], **({"torch+env": []} if torch_env else {}),
                                      **{name: [] for name, *_ in jax_sides}}
    for r in range(a.rounds):
        samples["torch"].append(side(a.torch_python, common + ["--side", "torch", json.dumps(shape)], a.threads))
        if torch_env:
            samples["torch+env"].append(side(a.torch_python, common + ["--side", "torch", json.dumps(shape)],
                                             a.threads, extra_env=torch_env))
        for name, overrides, flags, checkout, env in jax_sides:
            samples[name].append(side(sys.executable, common + ["--side", "jax", "--", *a.overrides, *overrides],
                                      a.threads, flags, checkout, env))
            if os.path.realpath(samples[name][-1]["source"]) != os.path.realpath(checkout):
                raise SystemExit(f"error: side {name} imported photon_jax from {samples[name][-1]['source']}, "
                                 f"not {checkout}")
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {v[-1]['step_time_s'] * 1e3:.1f} ms"
                                                           for k, v in samples.items()), flush=True)
    tokens = shape["batch"] * shape["seq"]
    result = {"preset": a.preset, "shape": shape, "threads": a.threads, "rounds": a.rounds, "steps": a.steps,
              "warmup": a.warmup, "overrides": a.overrides, "torch_env": torch_env,
              "jax_sides": {n: {"overrides": o, "xla_flags": f, "checkout": c, "env": e}
                            for n, o, f, c, e in jax_sides},
              "sides": {}}
    for name, runs in samples.items():
        step = statistics.median(r["step_time_s"] for r in runs)
        result["sides"][name] = {"step_time_s": step, "tokens_per_s": tokens / step,
                                 "round_step_times_s": [r["step_time_s"] for r in runs],
                                 "final_loss": runs[-1]["final_loss"], "allocator": runs[-1].get("allocator")}
    torch_tps = result["sides"]["torch"]["tokens_per_s"]
    for name, s in result["sides"].items():
        s["vs_torch"] = s["tokens_per_s"] / torch_tps
        print(f"{name:>14}: {s['step_time_s'] * 1e3:8.1f} ms/step  {s['tokens_per_s']:9.0f} tokens/s  "
              f"x{s['vs_torch']:.3f} vs torch")
    if a.json_file:
        with open(a.json_file, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

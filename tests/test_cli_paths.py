"""Success paths of the CLI, in-process through photon_jax.cli.main.main: `photon-jax run` (the embedded
default job: train photon-tiny, evaluate on held-out plays, generate) end to end at a few steps, and
`photon-jax generate` (text and --json) on the run directory it leaves.

One `run` (module fixture) serves both: it is the only training here. Tiny by overrides only (the
photon-tiny preset with one level of chunk 4, one layer per stack, width 32, vocabulary 384, three steps)
on 6,000-character slices of eight bundled plays: `run` has no option to bound its evaluation and
evaluates the complete validation split (112k tokens, most of a 77 s run, on the whole bundled corpus).
Two levels work the same way but add about 60% to the compile time, which is most of this module's cost.
"""

import contextlib
import io
import json
import math
import re
from types import SimpleNamespace

import pytest

from photon_jax.cli.cmd_run import DEFAULT_PROMPT
from photon_jax.cli.main import main
from photon_jax.data.preparation.corpus import shakespeare_files
from photon_jax.eval.evaluate import evaluate_run
from photon_jax.runs.workdir import load_run

STEPS = 3
RUN_NEW_TOKENS = 8
LEVELS = "[{chunk: 4, encoder_layers: 1, decoder_layers: 1}]"
TINY = ["model.vocab_size=384", "model.width=32", "model.ffn_width=64", "model.dtype=float32",
        f"model.levels={LEVELS}", "data.seq_len=32", "train.batch_size=8", f"train.steps={STEPS}",
        "train.warmup_steps=1", "train.eval_batches=1"]


@pytest.fixture(scope="module")
def default_job(tmp_path_factory, fast_compile):
    root = tmp_path_factory.mktemp("cli_run")
    corpus = root / "plays"
    corpus.mkdir()
    for path in shakespeare_files()[:8]:
        (corpus / path.name).write_text(path.read_text(encoding="utf-8")[:6000], encoding="utf-8")
    workdir = root / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", "--workdir", str(workdir), "--max-new-tokens", str(RUN_NEW_TOKENS),
                     *TINY, f"data.corpus={corpus}"])
    return SimpleNamespace(code=code, out=out.getvalue(), workdir=workdir)


def test_run_default_job_end_to_end(default_job):
    out = default_job.out
    assert default_job.code == 0, out[-3000:]

    # a complete checkpoint at the last step, with the overridden model in it
    workdir = default_job.workdir
    assert (workdir / "checkpoints" / str(STEPS) / "commit_success.txt").is_file()
    run = load_run(workdir)
    assert run.step == STEPS
    assert run.cfg.name == "photon-tiny"  # the default preset, overridden
    assert run.cfg.model.width == 32 and len(run.cfg.model.levels) == 1

    # the results table: steps, perplexity consistent with the token loss and with a fresh evaluation
    assert re.search(rf"== photon-tiny after {STEPS} steps \([\d,]+ params\) ==", out), out[-3000:]
    m = re.search(r"held-out plays: token loss ([\d.]+)\s+perplexity ([\d.]+)\s+bits/byte ([\d.]+)\s+"
                  r"\(([\d,]+) tokens\)", out)
    assert m, out[-3000:]
    loss, ppl, bpb, targets = float(m[1]), float(m[2]), float(m[3]), int(m[4].replace(",", ""))
    assert math.isfinite(ppl) and 1.0 < ppl
    assert ppl == pytest.approx(math.exp(loss), rel=1e-3)
    assert bpb > 0 and targets > 0
    fresh = evaluate_run(workdir)["validation"]
    assert fresh["targets"] == targets
    assert fresh["token_loss"] == pytest.approx(loss, abs=1e-4)
    assert fresh["perplexity"] == pytest.approx(ppl, abs=0.01)

    # the sample: the default prompt followed by generated text
    m = re.search(r"sample \((\w[\w-]*), temperature 0\.8, top-k 40\):\n(.*)\n\nrun directory: ", out, re.S)
    assert m, out[-3000:]
    sample = m[2]
    assert sample.startswith(DEFAULT_PROMPT), sample
    assert len(sample) > len(DEFAULT_PROMPT), "no generated text after the prompt"
    assert f"run directory: {workdir.resolve()}" in out


def test_generate_cli_text_and_json(default_job, capsys):
    assert default_job.code == 0
    workdir = str(default_job.workdir)
    prompt = "JULIET.\nO Romeo, Romeo"
    new = 6
    argv = ["generate", "--workdir", workdir, "--prompt", prompt, "--max-new-tokens", str(new), "--seed", "3"]

    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    m = re.fullmatch(r"--- sample 1 \(([\w-]+), (\d+) tokens, (\w+)\)\n(.*)\n", out, re.S)
    assert m, out
    mode, tokens, finish, text = m[1], int(m[2]), m[3], m[4]
    assert finish in ("length", "eos"), finish
    assert tokens == new if finish == "length" else 1 <= tokens <= new, (tokens, finish)
    assert text.startswith(prompt) and len(text) > len(prompt), text

    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    tok = load_run(workdir).tokenizer
    assert result["prompt"] == prompt
    assert result["prompt_tokens"] == len(tok.encode(prompt))
    assert result["mode"] == mode
    assert len(result["samples"]) == 1
    sample = result["samples"][0]
    # the same seed gives the same continuation as the text output
    assert sample["tokens"] == tokens and sample["finish"] == finish
    assert prompt + sample["text"] == text

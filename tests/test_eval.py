"""`photon-jax eval` on a trained run: text files, multiple-choice scoring, agreement, bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import prepare_few_plays, tiny_overrides

from photon_jax.cli.main import main
from photon_jax.config import load_config
from photon_jax.eval.choices import score_choices
from photon_jax.eval.evaluate import evaluate_run
from photon_jax.model import build_model
from photon_jax.model.losses import token_nll
from photon_jax.runs.workdir import load_run
from photon_jax.train.loop import train

VOCAB = 384


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    data_dir = prepare_few_plays(root, VOCAB)
    cfg = load_config(preset="photon-tiny", overrides=[
        f"data.data_dir={data_dir}", f"model.vocab_size={VOCAB}", "model.width=32", "model.ffn_width=64",
        "model.dtype=float32", "data.seq_len=32", "train.batch_size=8", "train.steps=3", "train.eval_batches=2",
    ])
    train(cfg, root / "run", quiet=True)  # on all 8 test devices: mesh data=8
    return root / "run"


def test_eval_text_file_matches_token_count(trained_run, tmp_path):
    text = tmp_path / "poem.txt"
    text.write_text("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n")
    results = evaluate_run(trained_run, text=str(text))
    run = load_run(trained_run)
    ids = run.tokenizer.encode(text.read_text()) + [run.tokenizer.eos_id]
    seq_len = run.cfg.data.seq_len
    firsts = ids[::seq_len]  # the first token of each window is context, never a target
    assert len(ids) > seq_len  # two windows at least
    assert results["text"]["targets"] == len(ids) - len(firsts)
    byte_lengths = run.tokenizer.byte_lengths()
    assert results["text"]["bytes"] == len(text.read_bytes()) - sum(byte_lengths[t] for t in firsts)
    assert results["text"]["token_loss"] > 0 and results["text"]["bits_per_byte"] > 0


def test_bits_per_byte_equals_an_independent_computation(trained_run, tmp_path):
    """bpb of a known text = its target NLL in bits over its target bytes, from plain forwards per window."""
    text = "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 2
    path = tmp_path / "richard.txt"
    path.write_text(text)
    got = evaluate_run(trained_run, text=str(path), batch_size=8)["text"]
    run = load_run(trained_run)
    cfg, tok = run.cfg, run.tokenizer
    forward = jax.jit(build_model(cfg.model).apply)  # one compile for every window (eager is slow)
    ids = tok.encode(text) + [tok.eos_id]
    seq_len = cfg.data.seq_len
    nll_sum, first_bytes = 0.0, 0
    for start in range(0, len(ids), seq_len):
        window = ids[start:start + seq_len]
        first_bytes += len(tok.decode([window[0]]).encode("utf-8"))  # a window's first token is never a target
        tokens = np.full((1, seq_len), tok.pad_id, np.int32)
        tokens[0, : len(window)] = window
        logits, _ = forward({"params": run.params}, jnp.asarray(tokens))
        nll_sum += float(np.asarray(token_nll(cfg.model, logits, jnp.asarray(tokens)))[0, : len(window) - 1].sum())
    target_bytes = len(text.encode("utf-8")) - first_bytes  # the EOS target has no bytes
    assert got["bytes"] == target_bytes
    assert got["bits_per_byte"] == pytest.approx(nll_sum / np.log(2) / target_bytes, rel=1e-5)


def test_multiple_choice_scores_equal_the_unpadded_forward(trained_run):
    run = load_run(trained_run)
    cfg, tok = run.cfg, run.tokenizer
    rows = [{"context": "ROMEO. What light", "choices": [" through yonder window", " xq zz"], "answer": 0},
            {"context": "Good night, good night!", "choices": [" Parting is", " such sweet", " sorrow"], "answer": 2}]
    result = score_choices(cfg.model, run.params, tok, rows, cfg.data.seq_len)
    assert result["questions"] == 2 and 0 <= result["acc"] <= 1 and 0 <= result["acc_norm"] <= 1

    # each choice's log-likelihood, computed directly on its own sequence padded to three meta-contexts more
    forward = jax.jit(build_model(cfg.model).apply)
    unit = cfg.model.meta_context

    def loglik(context, choice):
        ctx, cont = tok.encode(context), tok.encode(choice)
        assert tok.encode(context + choice) == ctx + cont  # no merge across the boundary in these texts
        seq = [tok.eos_id] + ctx + cont  # the document boundary first, as in training
        width = (len(seq) // unit + 3) * unit
        tokens = np.full((1, width), tok.pad_id, np.int32)
        tokens[0, : len(seq)] = seq
        logits, _ = forward({"params": run.params}, jnp.asarray(tokens))
        nll = np.asarray(token_nll(cfg.model, logits, jnp.asarray(tokens)))[0]
        return -nll[len(seq) - 1 - len(cont): len(seq) - 1].sum()

    correct = []
    for row, question in zip(rows, result["per_question"]):
        expected = [loglik(row["context"], c) for c in row["choices"]]
        np.testing.assert_allclose(question["loglikelihoods"], expected, rtol=1e-5, atol=1e-4)
        correct.append(int(np.argmax(expected)) == row["answer"])
    assert result["acc"] == pytest.approx(np.mean(correct))


def test_eval_cli_choices_agreement_and_bad_input(trained_run, tmp_path, capsys):
    good = tmp_path / "choices.jsonl"
    good.write_text(json.dumps({"context": "To be, or not", "choices": [" to be", " banana"], "answer": 0}) + "\n")
    code = main(["eval", "--workdir", str(trained_run), "--choices", str(good),
                 "--recgen-agreement", "--agreement-windows", "2", "--max-batches", "1", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    results = json.loads(out)
    assert results["choices"]["questions"] == 1
    agreement = results["agreement"]["hiergen_vs_recgen"]["teacher_forced"]
    assert 0 <= agreement["greedy_agreement"] <= 1 and agreement["kl"] >= 0

    bad_cases = [
        ("not json\n", "not valid JSON"),
        (json.dumps({"context": "a", "choices": ["b"], "answer": 0}) + "\n", "choices"),
        (json.dumps({"context": "a", "choices": ["b", "c"], "answer": 5}) + "\n", "answer"),
        ("", "no questions"),
    ]
    for i, (content, needle) in enumerate(bad_cases):
        path = tmp_path / f"bad{i}.jsonl"
        path.write_text(content)
        code = main(["eval", "--workdir", str(trained_run), "--choices", str(path)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], err
    for argv, needle in ((["--step", "999"], "no checkpoint at step 999"),
                         (["--text", str(tmp_path / "missing.txt")], "cannot read"),
                         (["--mesh", "data=x"], "--mesh")):
        code = main(["eval", "--workdir", str(trained_run), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], err


# ----------------------------------------------------------------------------- NLL by position


def test_slots_of_targets_by_hand():
    from photon_jax.eval.by_position import fold, target_positions, unit_periods

    for chunks, want in (((4, 4), {"level1": 4, "level2": 16}), ((2, 3), {"level1": 2, "level2": 6}),
                         ((2, 2, 2), {"level1": 2, "level2": 4, "level3": 8})):
        cfg = load_config(overrides=tiny_overrides(chunks=chunks))
        assert unit_periods(cfg.model) == want
    assert unit_periods(load_config(preset="vanilla-tiny").model) == {}
    # a 12-token window of (2, 3): targets are positions 1..11; NLL = position, one target each
    positions = target_positions(12)
    assert positions.tolist() == list(range(1, 12))
    nll_t, targets_t = positions.astype(float), np.ones(11)
    level1 = fold(nll_t, targets_t, 2)  # slot 0: positions 2,4,..,10; slot 1: 1,3,..,11
    assert level1["targets"] == [5, 6] and level1["nll"] == [6.0, 6.0]
    meta = fold(nll_t, targets_t, 6)  # slot s: positions s and s+6 (slot 0: only 6)
    assert meta["targets"] == [1, 2, 2, 2, 2, 2] and meta["nll"] == [6.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    for folded in (level1, meta):
        assert sum(folded["nll_sum"]) / sum(folded["targets"]) == nll_t.sum() / 11


def test_by_position_equals_a_manual_grouping_of_per_token_nll(trained_run, tmp_path, capsys):
    """The profile from the evaluation pass equals per-target NLLs of a plain forward grouped by hand; its
    token-weighted mean is the held-out NLL."""
    from photon_jax.eval.by_position import first_slot_excess

    text = tmp_path / "verse.txt"
    text.write_text("".join(f"Line {i}: to be, or not to be, that is the question.\n" for i in range(12)))
    got = evaluate_run(trained_run, text=str(text), batch_size=8, by_position={})
    profile = got["by_position"]
    assert profile["token_loss"] == pytest.approx(got["text"]["token_loss"], rel=1e-6)
    assert set(profile["slots"]) == {"level1", "level2"}
    run = load_run(trained_run)
    ids = run.tokenizer.encode(text.read_text()) + [run.tokenizer.eos_id]
    seq_len = run.cfg.data.seq_len
    forward = jax.jit(build_model(run.cfg.model).apply)
    by_slot = {4: [[] for _ in range(4)], 16: [[] for _ in range(16)]}
    for start in range(0, len(ids), seq_len):
        window = ids[start:start + seq_len]
        tokens = np.full((1, seq_len), run.tokenizer.pad_id, np.int32)
        tokens[0, :len(window)] = window
        logits, _ = forward({"params": run.params}, jnp.asarray(tokens))
        nll = np.asarray(token_nll(run.cfg.model, logits, jnp.asarray(tokens)))[0]
        for target in range(1, len(window)):  # the token at window position `target`
            for period, slots in by_slot.items():
                slots[target % period].append(nll[target - 1])
    for name, period in (("level1", 4), ("level2", 16)):
        folded = profile["slots"][name]
        assert folded["targets"] == [len(s) for s in by_slot[period]]
        np.testing.assert_allclose(folded["nll"], [np.mean(s) for s in by_slot[period]], rtol=1e-5)
        assert sum(folded["nll_sum"]) / sum(folded["targets"]) == pytest.approx(profile["token_loss"], rel=1e-12)
    assert first_slot_excess(profile["slots"]["level1"]) == pytest.approx(
        np.mean(by_slot[4][0]) - np.mean(np.concatenate(by_slot[4][1:])), abs=1e-5)

    plot = tmp_path / "pos.png"
    code = main(["eval", "--workdir", str(trained_run), "--by-position", "--max-batches", "1", "--compare",
                 str(trained_run), "--plot", str(plot)])
    out = capsys.readouterr().out
    assert code == 0 and plot.stat().st_size > 0 and "by slot in level1 (period 4)" in out
    for argv, needle in ((["--by-position", "--slots", "4,x"], "--slots"),
                         (["--by-position", "--slots", "3"], "does not divide the window length 32"),
                         (["--plot", str(plot)], "go with --by-position")):
        assert main(["eval", "--workdir", str(trained_run), "--max-batches", "1", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err

"""data.mixture: weighted, deterministic, resumable interleave of prepared dirs; token metrics; validation."""

import json
from fractions import Fraction

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from photon_jax.cli.main import main
from photon_jax.config import DataConfig, load_config
from photon_jax.data.loading.mixture import MixtureIterator, ProportionalInterleave, load_sources, proportions
from photon_jax.data.loading.packing import SplitSource, WindowStream
from photon_jax.data.loading.pipeline import train_iterator
from photon_jax.data.preparation.prepare import prepare
from photon_jax.errors import UserError
from photon_jax.runs import checkpoint as ckpt
from photon_jax.tokenizers.tokenizer import load_tokenizer, train_tokenizer
from photon_jax.train.loop import train

SEQ_LEN = 16


def char_docs(first: int, n: int, seed: int) -> list[str]:
    """Documents of distinct CJK characters from code point `first` on: with a tokenizer holding one piece
    per character, each source's token ids are its own, so a window's content tells its source."""
    lengths = np.random.default_rng(seed).integers(2, 60, size=n)
    docs, start = [], first
    for length in lengths:
        docs.append("".join(chr(start + i) for i in range(int(length))))
        start += int(length)
    return docs


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def vocab_for(*corpora) -> int:
    return 261 + sum(len(d) for docs in corpora for d in docs)  # specials + "\n" + 256 bytes + 1 per character


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    """Two dirs ("web", "code") prepared with one shared tokenizer, and one ("other") with its own."""
    root = tmp_path_factory.mktemp("mixture")
    web, code, other = char_docs(0x4E00, 16, 0), char_docs(0x5600, 10, 1), char_docs(0x6000, 6, 2)
    vocab = vocab_for(web, code)
    shared = root / "shared.model"
    train_tokenizer(web + code, shared, vocab)
    dirs = {}
    for name, docs in (("web", web), ("code", code)):
        corpus = write_jsonl(root / f"{name}.jsonl", docs)
        prepare(DataConfig(corpus=str(corpus), tokenizer=str(shared), validation_fraction=0.2), root / name, 0)
        dirs[name] = root / name
    prepare(DataConfig(corpus=str(write_jsonl(root / "other.jsonl", other)), validation_fraction=0.2),
            root / "other", vocab_for(other))
    dirs["other"] = root / "other"
    tok = load_tokenizer(shared)
    ids = {name: set(np.concatenate(tok.encode(docs)).tolist()) for name, docs in (("web", web), ("code", code))}
    for name in ("web", "code"):  # no train split may end in a window holding only its final EOS
        assert SplitSource(dirs[name], "train").tokens % SEQ_LEN != 1
    return {"root": root, "dirs": dirs, "ids": ids, "vocab": vocab, "eos": tok.eos_id}


def entries(mix, **weights):
    return tuple(f"{mix['dirs'][name]}:{w}" for name, w in weights.items())


def mixture_iterator(mix, weights=None, batch=8, seed=3, process_index=0, process_count=1, seq_len=SEQ_LEN):
    weights = weights or {"web": 0.75, "code": 0.25}
    return MixtureIterator(load_sources(entries(mix, **weights)), seq_len, batch, seed, process_index, process_count)


def take(it, n):
    return [next(it) for _ in range(n)]


def source_of(mix, tokens, mask) -> str:
    real = {int(t) for t in tokens[mask > 0]} - {mix["eos"]}
    owners = [name for name, ids in mix["ids"].items() if real and real <= ids]
    assert len(owners) == 1, (real, owners)
    return owners[0]


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
        np.testing.assert_array_equal(x["mask"], y["mask"])


def test_interleave_is_exact_random_access_and_in_proportion():
    assert proportions([Fraction("0.75"), Fraction("0.25")]) == (3, 1)
    assert proportions([Fraction("0.7"), Fraction("0.3")]) == (7, 3)  # exact, not rounded to 1% of the min
    assert [ProportionalInterleave((3, 1))[k][0] for k in range(8)] == [0, 0, 0, 1, 0, 0, 0, 1]
    for props in [(3, 1), (7, 3), (1, 2, 3), (100, 1, 3), (5, 1, 1, 2)]:
        interleave, total = ProportionalInterleave(props), sum(props)
        drawn = [0] * len(props)
        for k in range(2000):
            assert interleave.counts(k) == drawn  # the closed-form prefix count agrees with the map
            source, index = interleave[k]
            assert index == drawn[source]  # each source's windows are taken in order, none skipped
            drawn[source] += 1
            assert max(abs(c - (k + 1) * p / total) for c, p in zip(drawn, props)) < len(props)


def test_windows_come_from_the_right_source_in_proportion(mix):
    batches = take(mixture_iterator(mix), 25)  # 200 windows
    streams = {name: WindowStream(SplitSource(mix["dirs"][name], "train"), SEQ_LEN, 3) for name in ("web", "code")}
    drawn = {"web": 0, "code": 0}
    for batch in batches:
        names = [source_of(mix, t, m) for t, m in zip(batch["tokens"], batch["mask"])]
        assert names.count("web") == 6 and names.count("code") == 2  # 0.75 / 0.25 exactly in every batch of 8
        for name, tokens, mask in zip(names, batch["tokens"], batch["mask"]):
            expected = streams[name].window(drawn[name])  # each source's own seeded stream, in order
            np.testing.assert_array_equal(tokens, expected["tokens"])
            np.testing.assert_array_equal(mask, expected["mask"])
            drawn[name] += 1
    assert drawn["code"] > streams["code"].windows_per_epoch  # crossed an epoch of the smaller source


def test_one_source_mixture_is_the_plain_stream(mix):
    plain = take(train_iterator(mix["dirs"]["web"], SEQ_LEN, 8, seed=3), 6)
    assert_same(take(mixture_iterator(mix, {"web": 2}), 6), plain)


def test_processes_tile_the_global_batch(mix):
    whole = take(mixture_iterator(mix, batch=8), 6)
    halves = [take(mixture_iterator(mix, batch=8, process_index=p, process_count=2), 6) for p in range(2)]
    tiled = [{key: np.concatenate([h0[key], h1[key]]) for key in ("tokens", "mask")} for h0, h1 in zip(*halves)]
    assert_same(tiled, whole)
    assert halves[0][0]["tokens"].shape == (4, SEQ_LEN) and halves[0][0]["tokens"].dtype == np.int32


def test_resume_is_exact_on_any_process_count(mix):
    reference = take(mixture_iterator(mix), 12)
    first = mixture_iterator(mix)
    take(first, 5)
    state = json.loads(json.dumps(first.get_state()))  # what the checkpoint stores
    first.close()
    assert state["next_window"] == 40 and [s["proportion"] for s in state["sources"]] == [3, 1]
    resumed = mixture_iterator(mix)
    resumed.set_state(state)
    assert_same(take(resumed, 7), reference[5:])
    halves = []
    for p in range(2):
        it = mixture_iterator(mix, process_index=p, process_count=2)
        it.set_state(state)
        halves.append(take(it, 7))
    tiled = [{key: np.concatenate([h0[key], h1[key]]) for key in ("tokens", "mask")} for h0, h1 in zip(*halves)]
    assert_same(tiled, reference[5:])


def test_resume_with_other_sources_weights_or_seq_len_is_refused(mix):
    it = mixture_iterator(mix)
    next(it)
    state = it.get_state()
    refusals = [(mixture_iterator(mix, {"web": 0.5, "code": 0.5}), "proportions"),
                (mixture_iterator(mix, {"code": 0.25, "web": 0.75}), "other data"),
                (mixture_iterator(mix, seq_len=32), "seq_len"),
                (train_iterator(mix["dirs"]["web"], SEQ_LEN, 8, seed=3), "not a photon-jax train iterator")]
    for other, message in refusals:
        with pytest.raises(UserError, match=message) as e:
            other.set_state(state)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="data.mixture iterator"):
        mixture_iterator(mix).set_state(train_iterator(mix["dirs"]["web"], SEQ_LEN, 8, seed=3).get_state())
    same_ratio = mixture_iterator(mix, {"web": 3, "code": 1})  # 3:1 is the same interleave as 0.75:0.25
    same_ratio.set_state(state)
    assert same_ratio.next_window == 8


def test_token_counts_equal_the_window_contents(mix):
    it = mixture_iterator(mix, batch=4)
    assert it.token_counts() == {"tokens/web": 0, "tokens/code": 0}
    counted = {"tokens/web": 0, "tokens/code": 0}
    for _ in range(60):  # several epochs of both sources, so short last windows are included
        batch = next(it)
        for tokens, mask in zip(batch["tokens"], batch["mask"]):
            counted[f"tokens/{source_of(mix, tokens, mask)}"] += int(mask.sum())
        assert it.token_counts() == counted
    resumed = mixture_iterator(mix, batch=4, process_index=1, process_count=2)
    resumed.set_state(it.get_state())
    assert resumed.token_counts() == counted  # from the index map alone: equal on every process and after resume
    assert min(it.epochs.values()) > 1


def _cli(capsys, *argv):
    code = main(list(argv))
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_bad_mixtures_are_one_line_exit_2(mix, tmp_path, capsys):
    d = mix["dirs"]
    base = ["train", "--workdir", str(tmp_path / "run"), f"model.vocab_size={mix['vocab']}", "train.steps=1"]
    cases = [(f"[{d['web']}:1,{d['other']}:1]", "different tokenizers"),
             (f"[{d['web']}:1,{tmp_path / 'missing'}:1]", "is not a prepared data dir; run photon-jax prepare --out"),
             (f"[{d['web']}:0.75,{d['code']}:-1]", "weight must be > 0"),
             (f"[{d['web']}:0.75,{d['code']}:lots]", "is not a number"),
             (f"[{d['web']}]", "is not PATH:WEIGHT"),
             (f"[{d['web']}:1,{d['web']}/:2]", "twice")]
    for value, message in cases:
        code, err = _cli(capsys, *base, f"data.mixture={value}")
        assert code == 2 and len(err) == 1 and message in err[0], (value, err)
    assert str(d["web"]) in _cli(capsys, *base, f"data.mixture=[{d['web']}:1,{d['other']}:1]")[1][0]


def test_training_on_a_mixture_logs_tokens_and_validation_per_source(mix, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(jax, "devices", lambda *a: jax.local_devices()[:1])
    mixture = "[" + ",".join(entries(mix, web=0.75, code=0.25)) + "]"
    cfg = load_config(preset="vanilla-tiny", overrides=[  # the smallest model: the data path is what is tested
        f"data.mixture={mixture}", f"model.vocab_size={mix['vocab']}", "model.width=32", "model.ffn_width=64",
        "model.num_layers=1", "model.dtype=float32", "data.seq_len=32", "train.batch_size=4", "train.steps=4",
        "train.warmup_steps=1", "train.log_every=2", "train.eval_every=4", "train.eval_batches=1",
        "train.checkpoint_every=4", "mesh.data=1"])
    run = tmp_path / "run"
    summary = train(cfg, run, quiet=True)
    assert summary["step"] == 4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in records if r["split"] == "train"}
    expected = mixture_iterator(mix, batch=4, seed=cfg.data.seed, seq_len=32)
    for step in (2, 4):
        take(expected, 2)
        assert {k: logged[step][k] for k in ("tokens/web", "tokens/code")} == expected.token_counts()
    assert logged[4]["tokens/web"] > logged[4]["tokens/code"] > 0
    val = {r["split"]: r for r in records if r["split"].startswith("validation") and r["step"] == 4}
    assert set(val) == {"validation", "validation/web", "validation/code"}
    average = 0.75 * val["validation/web"]["token_loss"] + 0.25 * val["validation/code"]["token_loss"]
    assert val["validation"]["token_loss"] == pytest.approx(average)
    assert summary["validation"]["token_loss"] == pytest.approx(average)
    # `photon-jax eval` reports the same per-source metrics and weighted mean (same params, same batches)
    assert main(["eval", "--workdir", str(run), "--json", "--max-batches", "1", "--batch-size", "4"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    for split in ("validation", "validation/web", "validation/code"):
        for key in ("token_loss", "perplexity", "bits_per_byte"):
            assert evaluated[split][key] == pytest.approx(val[split][key], rel=1e-5), (split, key)
    # the checkpoint holds the mixture state (JSON through orbax); a resumed iterator continues from it
    manager = ckpt.make_manager(run, async_save=False)
    saved = manager.restore(4, args=ocp.args.Composite(data_iter=ocp.args.JsonRestore()))["data_iter"]
    manager.close()
    resumed = mixture_iterator(mix, batch=4, seed=cfg.data.seed, seq_len=32)
    resumed.set_state(dict(saved))
    assert resumed.next_window == 16 and resumed.token_counts() == expected.token_counts()
    assert_same(take(resumed, 2), take(expected, 2))

"""The tokenizer trains on a bounded sample (data.tokenizer_sample_mb): never more than the budget, every
work unit contributing in proportion to its size, the whole corpus when it fits."""

from photon_jax.data.preparation.corpus import corpus_inputs
from photon_jax.data.preparation.prepare import _sample_texts
from photon_jax.data.preparation.units import plan_units


def _corpus(tmp_path, sizes):
    for i, size in enumerate(sizes):
        line = f"document {i} " + "word " * 20 + "\n"
        (tmp_path / f"part{i}.txt").write_text(line * (size // len(line)))
    return corpus_inputs(str(tmp_path))


def test_sample_is_bounded_and_spread_over_every_unit(tmp_path):
    sizes = [150_000, 150_000, 50_000, 50_000, 100_000, 100_000]
    units = plan_units(_corpus(tmp_path, sizes), unit_bytes=40_000)
    assert len(units) == len(sizes)  # a text file is one unit
    budget = 60_000
    texts = list(_sample_texts(units, budget, "text"))
    assert sum(len(t) for t in texts) <= budget
    for i, size in enumerate(sizes):  # every file gives about its share of the budget
        taken = sum(len(t) for t in texts if t.startswith(f"document {i} "))
        assert 0.5 * budget * size / sum(sizes) <= taken <= 1.01 * budget * size / sum(sizes), (i, taken)


def test_a_corpus_within_the_budget_is_sampled_whole(tmp_path):
    units = plan_units(_corpus(tmp_path, [20_000, 10_000]), unit_bytes=8_000)
    total = sum(u.size for u in units)
    texts = list(_sample_texts(units, 10 * total, "text"))
    assert sum(len(t) for t in texts) == sum(len(p.read_text()) for p in tmp_path.glob("*.txt"))

"""lm-evaluation-harness tasks through our model class (eval/harness.py), offline, for every family.

Local tasks (tests/data/lm_eval: multiple choice, rolling perplexity, generate-until) run through
lm_eval.simple_evaluate; every per-request score the harness records is recomputed here with
model.apply on that one request's tokens (no batching, no ladder padding: vanilla unpadded, PHOTON
and Block padded only to one meta-context, the smallest input they take; right padding cannot
change earlier predictions), and rolling windows come from the harness's own window function.
"""

import functools
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import prepare_few_plays, random_variables, tiny_config
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from photon_jax.cli.main import main
from photon_jax.config import load_config
from photon_jax.data.manifest import load_manifest
from photon_jax.eval.backend import ModelBackend
from photon_jax.eval.scoring import rolling_spans, width_ladder
from photon_jax.eval.tasks import evaluate_tasks
from photon_jax.generation.api import generate
from photon_jax.generation.sampling import GREEDY
from photon_jax.model import build_model
from photon_jax.model.losses import target_logits
from photon_jax.runs.workdir import tokenizer_for
from photon_jax.train.loop import train

pytestmark = pytest.mark.usefixtures("fast_compile")
REPO = Path(__file__).resolve().parent.parent
TASK_DATA = REPO / "tests" / "data" / "lm_eval"
VOCAB = 384
FAMILIES = {
    "photon": dict(vocab=VOCAB),
    "block": dict(chunks=(4,), seq_mult=16, vocab=VOCAB),
    "vanilla": dict(family="vanilla", vocab=VOCAB, seq_mult=4),
}
TASKS = {
    "tiny_choice": """output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{answer}}"
doc_to_choice: "{{choices}}"
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
  - {metric: acc_norm, aggregation: mean, higher_is_better: true}""",
    "tiny_rolling": """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{page}}"
metric_list:
  - {metric: word_perplexity, higher_is_better: false}
  - {metric: byte_perplexity, higher_is_better: false}
  - {metric: bits_per_byte, higher_is_better: false}""",
    "tiny_until": """output_type: generate_until
doc_to_text: "{{question}}"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["e"]
  max_gen_toks: 8
metric_list:
  - {metric: exact_match, aggregation: mean, higher_is_better: true}""",
}


def write_task_dir(root: Path, data_dir: Path = TASK_DATA) -> Path:
    """Task YAMLs pointing at the JSONL files by absolute path, as a user writes them."""
    root.mkdir(parents=True, exist_ok=True)
    for name, body in TASKS.items():
        (root / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    train: {data_dir / name}.jsonl\n"
            f"    test: {data_dir / name}.jsonl\ntraining_split: train\ntest_split: test\n{body}\n")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    data_dir = prepare_few_plays(root, VOCAB)
    return {"root": root, "data": data_dir, "tok": tokenizer_for(data_dir, load_manifest(data_dir)),
            "tasks": write_task_dir(root / "tasks")}


@functools.cache
def _forward(cfg):
    model = build_model(cfg)
    return jax.jit(lambda params, row: target_logits(cfg, model.apply({"params": params}, row)[0]))


def independent_scores(cfg, params, tokens: list[int], scored: int) -> tuple[float, bool]:
    """Log-likelihood and all-greedy of the last `scored` tokens from one model.apply on this sequence."""
    width = len(tokens) if cfg.family == "vanilla" else -(-len(tokens) // cfg.meta_context) * cfg.meta_context
    row = np.zeros((1, width), np.int32)
    row[0, : len(tokens)] = tokens
    logits = np.asarray(_forward(cfg)(params, jnp.asarray(row)), np.float64)[0]
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
        -1, keepdims=True)
    targets = range(len(tokens) - 1 - scored, len(tokens) - 1)  # target j is token j + 1
    loglik = sum(logp[j, tokens[j + 1]] for j in targets)
    return float(loglik), all(int(np.argmax(logits[j])) == tokens[j + 1] for j in targets)


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], int]:
    """The harness reference models' split: whole text encoded, continuation = what follows the context."""
    ctx = context.rstrip()
    cont = context[len(ctx):] + continuation
    ctx_ids, whole = tok.encode(ctx), tok.encode(ctx + cont)
    assert whole[: len(ctx_ids)] == ctx_ids  # these texts have no merge across the boundary
    return [tok.eos_id] + whole, len(whole) - len(ctx_ids)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_harness_scores_equal_an_independent_forward(setup, family):
    opts = dict(FAMILIES[family])
    cfg = tiny_config(opts.pop("family", "photon"), **opts)
    model = build_model(cfg.model)
    params = random_variables(model, cfg.data.seq_len, seed=3)["params"]
    tok, max_len = setup["tok"], cfg.data.seq_len
    out = evaluate_tasks(cfg.model, params, tok, ["tiny_choice", "tiny_rolling"], max_len=max_len, batch_size=8,
                         include_path=[str(setup["tasks"])], log_samples=True, bootstrap_iters=0)
    samples = out["harness"]["samples"]
    assert len(samples["tiny_choice"]) == 12 and len(samples["tiny_rolling"]) == 3

    correct = []
    for doc in samples["tiny_choice"]:
        lls = []
        for (context, continuation), (loglik, greedy) in zip(doc["arguments"], doc["filtered_resps"]):
            tokens, scored = encode_pair(tok, context, continuation)
            expected_ll, expected_greedy = independent_scores(cfg.model, params, tokens[-max_len:], scored)
            assert loglik == pytest.approx(expected_ll, abs=1e-4, rel=1e-5)
            assert greedy == expected_greedy
            lls.append(expected_ll)
        correct.append(int(np.argmax(lls)) == doc["doc"]["answer"])
    assert out["harness"]["results"]["tiny_choice"]["acc,none"] == pytest.approx(np.mean(correct))

    # rolling: the document's total = the sum over the harness's own disjoint windows of one forward each
    long_docs = 0
    for doc in samples["tiny_rolling"]:
        ids = tok.encode(doc["doc"]["page"])
        long_docs += len(ids) >= max_len
        expected = 0.0
        for context, predicted in map(make_disjoint_window,
                                      get_rolling_token_windows(ids, tok.eos_id, max_len - 1, 1)):
            expected += independent_scores(cfg.model, params, context + predicted, len(predicted))[0]
        assert doc["filtered_resps"][0] == pytest.approx(expected, abs=1e-3, rel=1e-5)
    assert long_docs >= 1  # at least one document spans several windows
    # a whole task compiles a handful of programs: one per width of the ladder at most
    assert len(out["widths"]) <= len(width_ladder(cfg.model.meta_context, max_len))


def test_a_task_compiles_a_handful_of_programs(setup):
    """60 requests of every length: one scoring program per width of the ladder, no more."""
    cfg = tiny_config(vocab=VOCAB)
    params = random_variables(build_model(cfg.model), cfg.data.seq_len)["params"]
    backend = ModelBackend(cfg.model, params, setup["tok"], cfg.data.seq_len, batch_size=8)
    rng = np.random.default_rng(0)
    words = "to be or not that is the question whether tis nobler in mind suffer".split()
    pairs = [(" ".join(rng.choice(words, int(rng.integers(0, 20)))), " " + " ".join(rng.choice(words, 2)))
             for _ in range(60)]
    backend.loglikelihood(pairs)
    ladder = width_ladder(cfg.model.meta_context, cfg.data.seq_len)
    assert ladder == [16, 32, 64]
    assert 2 <= backend.scorer.program._cache_size() <= len(ladder)
    assert backend.scorer.program._cache_size() == len(backend.scorer.widths_run)


def test_rolling_windows_score_every_token_once():
    ids = list(range(10, 40))
    for max_len in (2, 5, 8, 31, 32, 64):
        spans = rolling_spans(ids, 1, max_len)
        scored = [t for s in spans for t in s.tokens[len(s.tokens) - s.scored:]]
        assert scored == ids and all(len(s.tokens) <= max_len for s in spans)
        assert spans[0].tokens[0] == 1  # the boundary token conditions the first prediction
        if len(spans) > 1:  # later windows are full: as much context as the model takes
            assert all(len(s.tokens) == max_len or s.tokens[0] == ids[0] for s in spans[1:])


def test_generate_until_equals_generate_and_stops_at_the_stop_string(setup):
    cfg = tiny_config(vocab=VOCAB)
    model = build_model(cfg.model)
    params = random_variables(model, cfg.data.seq_len, seed=5)["params"]
    tok, max_len = setup["tok"], cfg.data.seq_len
    backend = ModelBackend(cfg.model, params, tok, max_len, batch_size=4)
    prompts = ["KING. Speak,", "HAMLET. To be", "JULIET. O"]
    free = generate(cfg.model, params, [[tok.eos_id] + tok.encode(p) for p in prompts], max_new_tokens=12,
                    sampling=GREEDY, eos_id=tok.eos_id, max_context=max_len)
    texts = [tok.decode([t for t in row[0] if t != tok.eos_id]) for row in free.tokens]
    assert backend.generate_until([(p, {"max_gen_toks": 12, "until": []}) for p in prompts]) == texts
    # a stop string from inside each continuation: the output is the text before it
    for p, text in zip(prompts, texts):
        assert len(text) >= 4
        stop = text[2:4]
        got = backend.generate_until([(p, {"max_gen_toks": 12, "until": [stop, "\x00never"]})])[0]
        assert got == text[: text.find(stop)]

    out = evaluate_tasks(cfg.model, params, tok, ["tiny_until"], max_len=max_len, batch_size=4,
                         include_path=[str(setup["tasks"])], log_samples=True, bootstrap_iters=0)
    for doc in out["harness"]["samples"]["tiny_until"]:
        prompt = [tok.eos_id] + tok.encode(doc["arguments"][0][0])
        ref = generate(cfg.model, params, [prompt], max_new_tokens=8, sampling=GREEDY, eos_id=tok.eos_id,
                       max_context=max_len).tokens[0][0]
        ref_text = tok.decode([t for t in ref if t != tok.eos_id])
        assert doc["resps"][0][0] == (ref_text[: ref_text.find("e")] if "e" in ref_text else ref_text)


@pytest.fixture(scope="module")
def trained_run(setup):
    root = setup["root"]
    cfg = load_config(preset="photon-tiny", overrides=[
        f"data.data_dir={setup['data']}", f"model.vocab_size={VOCAB}", "model.width=32", "model.ffn_width=64",
        "model.dtype=float32", "data.seq_len=32", "train.batch_size=8", "train.steps=2", "train.eval_batches=1",
        "train.eval_tasks=[tiny_choice,tiny_rolling]", "train.eval_tasks_limit=6",
        f"train.eval_tasks_include=[{setup['tasks']}]",  # evaluation during training, at the last step
    ])
    train(cfg, root / "run", quiet=True)
    return root / "run"


def _eval_json(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _scores(results: dict) -> dict:
    return {task: {k: v for k, v in m.items() if isinstance(v, float)} for task, m in results["results"].items()}


def _launch_eval(processes: int, devices: int, args: list[str], out_file: Path, home: Path) -> dict:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "HOME": str(home),
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(home / "hf")}
    proc = subprocess.run([sys.executable, "-m", "launch.local", "--processes", str(processes),
                           "--devices-per-process", str(devices), "--timeout", "400", "--", sys.executable, "-m",
                           "photon_jax.cli.main", "eval", *args, "--output", str(out_file)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out_file.read_text())


@pytest.mark.slow
def test_scores_equal_on_every_mesh_and_with_two_processes(setup, trained_run, capsys, tmp_path):
    common = ["--workdir", str(trained_run), "--tasks", "tiny_choice,tiny_rolling", "--include-path",
              str(setup["tasks"]), "--batch-size", "8", "--limit", "6"]
    runs = {"8,1,1": _eval_json(capsys, *common, "--mesh", "data=8,fsdp=1,tensor=1"),
            "2,2,2": _eval_json(capsys, *common, "--mesh", "data=2,fsdp=2,tensor=2")}
    assert runs["2,2,2"]["run"]["mesh"] == "data=2,fsdp=2,tensor=2"
    runs = {k: v["harness"] for k, v in runs.items()}
    # one device (1, 1, 1), and 2 processes x 4 devices on (2, 2, 2): process 0 drives the harness, both
    # processes run every batch, process 0 alone writes
    # (generation too: tiny_until runs through the cached generation API on every process)
    launched = common + ["--log-samples"]
    launched[3] += ",tiny_until"
    runs["1,1,1"] = _launch_eval(1, 1, launched + ["--mesh", "data=1,fsdp=1,tensor=1", "--batch-size", "2"],
                                 tmp_path / "one.json", tmp_path)
    runs["2 processes"] = _launch_eval(2, 4, launched + ["--mesh", "data=2,fsdp=2,tensor=2"], tmp_path / "two.json",
                                       tmp_path)
    texts = {k: [doc["resps"] for doc in runs[k]["samples"]["tiny_until"]] for k in ("1,1,1", "2 processes")}
    assert texts["1,1,1"] == texts["2 processes"] and len(texts["1,1,1"]) == 5
    reference = _scores(runs["8,1,1"])
    assert reference["tiny_choice"]["acc,none"] >= 0 and "bits_per_byte,none" in reference["tiny_rolling"]
    # the same scores were logged by the evaluation during training (train.eval_tasks), at its last step
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if r["split"] == "tasks"]
    assert [r["step"] for r in logged] == [2]
    for task in reference:
        for key, value in reference[task].items():
            if not key.split(",")[0].endswith("_stderr"):
                assert logged[0][f"{task}/{key.split(',')[0]}"] == pytest.approx(value, rel=1e-5), (task, key)
    for name, results in runs.items():
        scores = _scores(results)
        assert scores.keys() - {"tiny_until"} == reference.keys(), name
        assert scores["tiny_choice"]["acc,none"] == reference["tiny_choice"]["acc,none"], name
        for task in reference:
            for key in reference[task]:
                assert scores[task][key] == pytest.approx(reference[task][key], rel=1e-5), (name, task, key)


@pytest.mark.parametrize("case", ["unknown task", "missing dataset offline", "no tokenizer", "bad batch",
                                  "unknown task in training"])
def test_bad_task_inputs_are_one_line_exit_2(setup, trained_run, case, capsys, tmp_path, monkeypatch):
    args = ["eval", "--workdir", str(trained_run), "--tasks", "tiny_choice", "--include-path", str(setup["tasks"])]
    if case == "unknown task":
        args[4] = "tiny_choise"
        expect = "unknown lm-eval task 'tiny_choise' (did you mean tiny_choice"
    elif case == "missing dataset offline":
        tasks = write_task_dir(tmp_path / "tasks", tmp_path / "nowhere")
        (tasks / "hub_task.yaml").write_text((tasks / "tiny_choice.yaml").read_text().replace(
            "task: tiny_choice", "task: hub_task").replace("dataset_path: json", "dataset_path: allenai/not_cached")
            .split("dataset_kwargs")[0] + "test_split: test\n" + TASKS["tiny_choice"] + "\n")
        args[4:7] = ["hub_task", "--include-path", str(tasks)]
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
        expect = "task 'hub_task': cannot load its dataset"
    elif case == "no tokenizer":
        args += [f"data.data_dir={tmp_path / 'gone'}"]
        expect = "gone"
    elif case == "bad batch":
        args += ["--batch-size", "3"]
        expect = "batch size 3 is not divisible"
    else:  # checked before the first step
        args = ["train", "--preset", "photon-tiny", "--workdir", str(tmp_path / "run"),
                f"data.data_dir={setup['data']}",
                f"model.vocab_size={VOCAB}", "train.eval_tasks=[tiny_choice,nope_task]",
                f"train.eval_tasks_include=[{setup['tasks']}]"]
        expect = "unknown lm-eval task 'nope_task'"
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err

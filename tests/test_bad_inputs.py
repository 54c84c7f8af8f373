"""Bad input anywhere (CLI arguments, configs, data files, prompts, checkpoints) gives one clear line on
stderr, exit code 2 and no traceback: in-process through photon_jax.cli.main.main, a few through the
installed `photon-jax` console script, and random dotted overrides (hypothesis) that must give either a
valid config or a ConfigError, never another exception.
"""

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import pytest
from conftest import prepare_two_corpora, tiny_overrides, use_one_device
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reliability_worker import compile_cache

from photon_jax.cli.main import main
from photon_jax.config import Config, config_from_json, load_config
from photon_jax.errors import ConfigError
from photon_jax.train.loop import train

REPO = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = Path(sys.executable).parent / "photon-jax"
VOCAB = 512


def small(data_dir):
    return tiny_overrides(vocab=VOCAB, chunks=(4,), seq_mult=16) + [
        "model.family=vanilla", "model.num_layers=1", f"data.data_dir={data_dir}", "train.batch_size=4",
        "train.steps=2", "train.warmup_steps=1", "train.eval_batches=1", "mesh.data=1"]


@pytest.fixture(autouse=True)
def one_device(monkeypatch):
    use_one_device(monkeypatch)


@pytest.fixture(scope="module")
def p(tmp_path_factory, fast_compile):
    """Every bad file the cases point at, prepared data (two tokenizers) and a trained 2-step run."""
    root = tmp_path_factory.mktemp("bad_inputs")
    prepare_two_corpora(root, VOCAB)
    files = {
        "invalid.yaml": "model: [unclosed\n", "list.yaml": "- a\n- b\n", "base.yaml": "base: no-such-preset\n",
        "ok.yaml": "model:\n  width: 64\n", "bad.jsonl": '{"text": "fine"}\n{not json\n',
        "nokey.jsonl": '{"body": "no text field"}\n', "notobj.jsonl": "[1, 2]\n", "empty.txt": "  \n\n",
        "garbage.model": "not a sentencepiece model", "badchoices.jsonl": '{"context": "a", "choices": ["b"]\n',
        "nokeychoices.jsonl": '{"context": "a"}\n', "afile": "a file, not a directory",
        "oobchoices.jsonl": '{"context": "a", "choices": ["b", "c"], "answer": 7}\n',
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00\x01binary")
    (root / "emptydir").mkdir()
    shutil.copytree(root / "data", root / "corrupt_data")
    (root / "corrupt_data" / "manifest.json").write_text("{not json")
    shutil.copytree(root / "data", root / "missing_shard")
    for path in (root / "missing_shard" / "units").glob("*/tokens.array_record"):
        path.unlink()
    shutil.copytree(root / "data", root / "missing_index")
    for path in (root / "missing_index" / "train").iterdir():
        path.unlink()

    run = root / "run"
    with compile_cache(tmp_path_factory.getbasetemp() / "jax_cache"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(jax, "devices", lambda *a: jax.local_devices()[:1])
        train(load_config(overrides=small(root / "data") + ["train.checkpoint_every=1"]), run, quiet=True)
    ckpts = run / "checkpoints"
    variants = {"no_ckpt": None, "empty_ckpts": None, "data_gone": "data", "no_meta": "meta", "bad_config": "config"}
    for name, what in variants.items():
        (root / name).mkdir()
        if name == "empty_ckpts":
            (root / name / "checkpoints").mkdir()
        if what is None:
            continue
        shutil.copytree(ckpts, root / name / "checkpoints")
        step_dir = root / name / "checkpoints" / "2"
        if what == "data":
            saved = json.loads((step_dir / "config" / "metadata").read_text())
            saved["data"]["data_dir"] = str(root / "gone")
            (step_dir / "config" / "metadata").write_text(json.dumps(saved))
        elif what == "meta":
            (step_dir / "meta" / "metadata").unlink()
        else:
            (step_dir / "config" / "metadata").write_text('{"model": 5}')
    return SimpleNamespace(root=root, run=run, data=root / "data", other=root / "other", **{
        k.replace(".", "_"): root / k for k in [*files, "binary.txt", "emptydir", "corrupt_data", "missing_shard",
                                                "missing_index", *variants]})


def generate(p, *extra):
    return ["generate", "--workdir", p.run, "--prompt", "ROMEO.", "--max-new-tokens", "2", *extra]


def case(name, argv, expected, marks=()):
    return pytest.param(argv, expected, id=name, marks=marks)


CASES = [
    # --- CLI arguments
    case("no-command", lambda p: [], "arguments are required: COMMAND"),
    case("unknown-command", lambda p: ["frobnicate"], "invalid choice: 'frobnicate'"),
    case("unknown-option", lambda p: ["train", "--bogus"], "unrecognized arguments: --bogus"),
    case("missing-workdir", lambda p: ["generate", "--prompt", "x"], "required: --workdir"),
    case("step-not-int", lambda p: ["eval", "--workdir", p.run, "--step", "abc"], "invalid int value: 'abc'"),
    case("zero-samples", lambda p: generate(p, "--num-samples", "0"), "must be >= 1"),
    case("negative-new-tokens", lambda p: generate(p, "--max-new-tokens", "-1"), "must be >= 1"),
    case("negative-max-batches", lambda p: ["eval", "--workdir", p.run, "--max-batches", "-1"], "must be >= 0"),
    case("mesh-garbage", lambda p: ["eval", "--workdir", p.run, "--mesh", "garbage"], "expected data=N,fsdp=N"),
    case("mesh-zero", lambda p: ["eval", "--workdir", p.run, "--mesh", "data=0,fsdp=1,tensor=1"], "needs 0 devices"),
    case("negative-context", lambda p: ["params", "--context", "-5"], "--context must be > 0"),
    case("validation-fraction", lambda p: ["prepare", "--validation-fraction", "1.5", "--out", p.root / "o1"],
         "--validation-fraction must be in [0, 1)"),
    case("negative-vocab", lambda p: ["prepare", "--vocab-size", "-1", "--out", p.root / "o2"],
         "--vocab-size must be > 0"),
    case("negative-temperature", lambda p: generate(p, "--temperature", "-1"), "temperature must be >= 0"),
    case("top-p-zero", lambda p: generate(p, "--top-p", "0"), "top_p must be in (0, 1]"),
    case("top-k-too-big", lambda p: generate(p, "--top-k", "100000"), "top_k must be in [0, 512]"),
    case("unknown-mode", lambda p: generate(p, "--mode", "bogus"),
         "argument --mode: invalid choice: 'bogus' (choose from 'hiergen', 'recgen', 'exact-local', 'vanilla')"),
    case("unknown-split", lambda p: ["eval", "--workdir", p.run, "--split", "test"], "invalid choice: 'test'"),
    # --- configs
    case("unknown-preset", lambda p: ["params", "--preset", "nope"], "unknown preset 'nope'"),
    case("missing-config", lambda p: ["params", "--config", p.root / "missing.yaml"], "No such file"),
    case("invalid-yaml", lambda p: ["params", "--config", p.invalid_yaml], "is not valid YAML"),
    case("yaml-list", lambda p: ["params", "--config", p.list_yaml], "must be a YAML mapping"),
    case("yaml-unknown-base", lambda p: ["params", "--config", p.base_yaml], "unknown preset 'no-such-preset'"),
    case("config-is-directory", lambda p: ["params", "--config", p.emptydir], "Is a directory"),
    case("preset-and-config", lambda p: ["params", "--preset", "photon-tiny", "--config", p.ok_yaml],
         "either a preset or a config file"),
    case("override-without-equals", lambda p: ["params", "model.width"], "is not key=value"),
    case("override-empty-key", lambda p: ["params", "=5"], "has an empty key"),
    case("override-unknown-key", lambda p: ["params", "model.widht=3"], "unknown key config.model.widht"),
    case("override-wrong-type", lambda p: ["params", "model.width=abc"], "must be an integer, got 'abc'"),
    case("override-negative", lambda p: ["params", "model.width=-1"], "model.width must be > 0"),
    case("override-bad-index", lambda p: ["params", "model.levels.5.chunk=2"], "no such list element"),
    case("override-into-scalar", lambda p: ["params", "model.width.foo=3"], "must be an integer"),
    case("override-section-scalar", lambda p: ["params", "model=5"], "config.model must be a mapping"),
    case("override-bad-choice", lambda p: ["params", "train.nonfinite=explode"], "must be skip or halt"),
    case("override-negative-skip-limit", lambda p: ["params", "train.max_consecutive_skips=-1"],
         "train.max_consecutive_skips must be >= 0"),
    case("seq-len-not-multiple", lambda p: ["params", "data.seq_len=63"], "not a multiple of the chunk product"),
    case("heads-not-dividing", lambda p: ["params", "model.num_heads=3"], "does not divide model.width"),
    case("int-dtype", lambda p: ["params", "model.dtype=int8"], "is not a float dtype"),
    case("nan-learning-rate", lambda p: ["params", "train.learning_rate=.nan"],
         "learning_rate must be a finite number"),
    case("inf-learning-rate", lambda p: ["params", "train.learning_rate=.inf"], "learning_rate"),
    case("zero-chunk", lambda p: ["params", "model.levels.0.chunk=0"], "chunk must be >= 2"),
    case("unknown-mesh-axis", lambda p: ["train", "--dry-run", "mesh.rules=[[batch, gpu]]"], "unknown mesh axis"),
    case("accum-not-dividing", lambda p: ["train", "--workdir", p.root / "t1", *small(p.data), "train.batch_size=3",
                                          "train.grad_accum=2"], "must be divisible by train.grad_accum"),
    # --- data files
    case("corpus-missing", lambda p: ["prepare", "--corpus", p.root / "nope.txt", "--out", p.root / "o3"],
         "not found"),
    case("corpus-dir-without-txt", lambda p: ["prepare", "--corpus", p.emptydir, "--out", p.root / "o4"],
         "has no .txt, .jsonl, .jsonl.gz, .jsonl.zst or .parquet files"),
    case("corpus-empty", lambda p: ["prepare", "--corpus", p.empty_txt, "--out", p.root / "o5"], "has no text"),
    case("corpus-binary", lambda p: ["prepare", "--corpus", p.binary_txt, "--out", p.root / "o6"],
         "is not valid UTF-8"),
    case("jsonl-invalid-line", lambda p: ["prepare", "--corpus", p.bad_jsonl, "--out", p.root / "o7"],
         "line 2 is not valid JSON"),
    case("jsonl-invalid-line-in-a-worker", lambda p: ["prepare", "--corpus", p.bad_jsonl, "--out", p.root / "o7w",
                                                      "--tokenizer", p.data / "tokenizer.model", "--vocab-size", "0",
                                                      "--workers", "2", "--unit-mb", "0.00001"],
         "line 2 is not valid JSON"),
    case("jsonl-no-text", lambda p: ["prepare", "--corpus", p.nokey_jsonl, "--out", p.root / "o8"],
         'has no "text" string field'),
    case("jsonl-not-object", lambda p: ["prepare", "--corpus", p.notobj_jsonl, "--out", p.root / "o9"],
         'is not a JSON object'),
    case("tokenizer-missing", lambda p: ["prepare", "--tokenizer", p.root / "nope.model", "--out", p.root / "o10"],
         "not found"),
    case("tokenizer-garbage", lambda p: ["prepare", "--tokenizer", p.garbage_model, "--out", p.root / "o11"],
         "is not a SentencePiece model"),
    case("manifest-corrupt", lambda p: ["train", "--workdir", p.root / "t2", *small(p.corrupt_data)],
         "manifest.json is unreadable or corrupt"),
    case("shard-missing", lambda p: ["train", "--workdir", p.root / "t3", *small(p.missing_shard)],
         "is missing units/00000/tokens.array_record"),
    case("index-missing", lambda p: ["train", "--workdir", p.root / "t3b", *small(p.missing_index)],
         "train has an unreadable index"),
    case("eval-data-other-tokenizer", lambda p: ["eval", "--workdir", p.run, "--data", p.other],
         "another tokenizer"),
    case("eval-data-missing", lambda p: ["eval", "--workdir", p.run, "--data", p.root / "nope"],
         "has no manifest.json"),
    case("prepare-out-under-a-file", lambda p: ["prepare", "--out", p.afile / "sub"], "afile"),
    # --- prompts and texts to score
    case("empty-prompt", lambda p: ["generate", "--workdir", p.run, "--prompt", ""], "prompt is empty"),
    case("empty-stdin-prompt", lambda p: ["generate", "--workdir", p.run, "--prompt", "-"], "prompt is empty"),
    case("text-missing", lambda p: ["eval", "--workdir", p.run, "--text", p.root / "nope.txt"], "No such file"),
    case("text-empty", lambda p: ["eval", "--workdir", p.run, "--text", p.empty_txt], "is empty"),
    case("text-binary", lambda p: ["eval", "--workdir", p.run, "--text", p.binary_txt], "is not UTF-8"),
    case("choices-invalid-json", lambda p: ["eval", "--workdir", p.run, "--choices", p.badchoices_jsonl],
         "is not valid JSON"),
    case("choices-missing-keys", lambda p: ["eval", "--workdir", p.run, "--choices", p.nokeychoices_jsonl],
         "needs context (str), choices"),
    case("choices-answer-out-of-range", lambda p: ["eval", "--workdir", p.run, "--choices", p.oobchoices_jsonl],
         "a valid answer index"),
    # --- checkpoints and work directories
    case("workdir-missing", lambda p: ["eval", "--workdir", p.root / "nope"], "does not exist"),
    case("workdir-is-a-file", lambda p: ["generate", "--workdir", p.afile, "--prompt", "x"], "does not exist"),
    case("no-checkpoints", lambda p: ["eval", "--workdir", p.no_ckpt], "has no checkpoints; train first"),
    case("empty-checkpoints", lambda p: ["generate", "--workdir", p.empty_ckpts, "--prompt", "x"],
         "has no complete checkpoint"),
    case("step-not-saved", lambda p: ["eval", "--workdir", p.run, "--step", "999"], "no checkpoint at step 999"),
    case("negative-step", lambda p: generate(p, "--step", "-1"), "no checkpoint at step -1"),
    case("checkpoint-data-gone", lambda p: ["eval", "--workdir", p.data_gone], "has no manifest.json"),
    case("checkpoint-meta-missing", lambda p: ["generate", "--workdir", p.no_meta, "--prompt", "x"],
         "is unreadable or incompatible"),
    case("checkpoint-config-corrupt", lambda p: ["generate", "--workdir", p.bad_config, "--prompt", "x"],
         "config.model must be a mapping"),
    case("train-on-corrupt-config", lambda p: ["train", "--workdir", p.bad_config, *small(p.data)],
         "config.model must be a mapping"),
]


@pytest.mark.parametrize("argv, expected", CASES)
def test_bad_input_is_one_line_exit_2(p, argv, expected, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code = main([str(a) for a in argv(p)])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2, (code, captured.err[-2000:])
    assert len(err) == 1 and err[0].startswith("photon-jax: error: "), err
    assert expected in err[0], err[0]


N_BAD_INPUT_CASES = 77  # update deliberately when a case is added or removed


def test_bad_input_case_count_is_pinned():
    """Dropping (or skip-marking) a bad-input case must fail here, not silently shrink the suite."""
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids), sorted({i for i in ids if ids.count(i) > 1})
    assert len([c for c in CASES if not c.marks]) == len(CASES) == N_BAD_INPUT_CASES


@pytest.mark.parametrize("argv, expected", [
    (lambda p: [], "arguments are required: COMMAND"),
    (lambda p: ["params", "model.width=abc"], "must be an integer, got 'abc'"),
    (lambda p: ["generate", "--workdir", p.run, "--step", "999", "--prompt", "x"], "no checkpoint at step 999"),
], ids=["no-command", "bad-override", "missing-step"])
def test_console_script_prints_one_line_and_exits_2(p, argv, expected):
    """The installed entry point, in a real process: stderr is exactly one line, no traceback."""
    assert CONSOLE_SCRIPT.is_file(), CONSOLE_SCRIPT
    proc = subprocess.run([str(CONSOLE_SCRIPT), *map(str, argv(p))], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("photon-jax: error: ") and expected in lines[0], lines


# ----------------------------------------------------------------------------- property-based: overrides

def _dotted(value, prefix=""):
    """(dotted key, default value) of every node of the default config, lists and mappings included."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _dotted(v, f"{prefix}{k}.")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _dotted(v, f"{prefix}{i}.")
    if prefix:
        yield prefix[:-1], value


DEFAULTS = dict(_dotted(Config().to_dict()))
KEYS = sorted(DEFAULTS)
SCALAR_KEYS = sorted(k for k, v in DEFAULTS.items() if isinstance(v, (bool, int, float, str)))
CHOICES = ["A", "B", "C", "skip", "halt", "xla", "auto", "none", "full", "dots", "concat", "norm_linear", "learned",
           "fixed", "float32", "bfloat16", "photon", "vanilla", "shakespeare"]


def _typed_value(key):
    """A value of the key's own type, often in range: most such overrides give valid configs."""
    default = DEFAULTS[key]
    if isinstance(default, bool):
        return st.booleans().map(lambda b: str(b).lower())
    if isinstance(default, int):
        return st.one_of(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]), st.integers(-3, 300)).map(str)
    if isinstance(default, float):
        return st.one_of(st.floats(0.001, 0.9), st.floats(-1e3, 1e6)).map(repr)
    return st.sampled_from([default or "x", *CHOICES])


typed = st.sampled_from(SCALAR_KEYS).flatmap(lambda k: _typed_value(k).map(lambda v: f"{k}={v}"))
_segment = st.sampled_from(["model", "train", "data", "mesh", "levels", "0", "5", "-1", "width", "chunk", "x",
                            "rules", "", " ", "__class__", "1e3"])
keys = st.one_of(st.sampled_from(KEYS),  # real keys (mappings and lists too), real keys made wrong, random keys
                 st.builds(lambda k, s: f"{k}.{s}", st.sampled_from(KEYS), _segment),
                 st.lists(_segment, min_size=1, max_size=4).map(".".join))
scalars = st.one_of(st.integers(-2**40, 2**40), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.sampled_from(["", "null", "~", "[", "]", "{", "}", "a: b", "- x", "[1, [2]]", "{a: 1}",
                                     "yes", "1e-3", ".inf", "-.inf", ".nan", "0x10", "'quoted'", "\"x",
                                     "!!python/object:os.system", "&a [*a]", "*x", *CHOICES]),
                    st.text(max_size=12))
values = st.one_of(scalars.map(str), st.lists(scalars, max_size=3).map(json.dumps),
                   st.dictionaries(st.sampled_from(["chunk", "fanout", "width", "x"]), scalars,
                                   max_size=2).map(json.dumps))
anything = st.builds(lambda k, v: f"{k}={v}", keys, values)
overrides = st.lists(st.one_of(typed, typed, anything), min_size=1, max_size=3)


# derandomize: the same examples every run (a new failure is a regression, not a flake)
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(items=overrides, preset=st.sampled_from([None, "photon-tiny", "vanilla-tiny"]))
def test_random_overrides_give_a_valid_config_or_a_config_error(items, preset):
    try:
        cfg = load_config(preset=preset, overrides=items)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        event("ConfigError")
        return
    event("valid")
    assert isinstance(cfg, Config)
    assert config_from_json(cfg.to_json()) == cfg  # what a checkpoint saves loads back the same


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(items=overrides)
def test_random_overrides_through_the_cli_are_one_line_or_success(items):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(["params", "--json", *items])
    lines = err.getvalue().strip().splitlines()
    if code == 0:
        assert not lines and json.loads(out.getvalue())["total_params"] > 0
    else:
        assert code == 2 and len(lines) == 1 and lines[0].startswith("photon-jax: error: "), lines

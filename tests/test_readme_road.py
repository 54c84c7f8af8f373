"""The README's road past the set-up, run as the README shows it: the sharded training command on 8 CPU
devices, then the serve command on that run, with the README's curl line and `openai` snippet against it.

Each command is read from README.md and run with only what must differ here swapped in: a tiny model
named photon-tiny (the name the README's clients send) trained on a few pages of plays, the directories,
a free port. A changed flag, a broken snippet or a command the README drops fails here
(tests/test_doc_commands.py only parses commands)."""

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_doc_commands import logical_lines, shown_commands
from test_serve import TINY as SERVE_TINY

from photon_jax.data.preparation.corpus import shakespeare_files

pytestmark = pytest.mark.slow  # about 50 s each on 2 CPU cores: a sharded training run, a server's compiles

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CONSOLE_SCRIPT = Path(sys.executable).parent / "photon-jax"
README_URL = "http://127.0.0.1:8000/v1"  # where the README's clients send their requests
# tests/test_serve.py's tiny model, named as the README's run is (the model name its clients send)
TINY = [*SERVE_TINY, "name=photon-tiny"]
FAST_COMPILE = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}  # the tests' own setting (fast_compile), in subprocesses


def readme_command(first: str, *having: str) -> list[str]:
    """argv (after `photon-jax`) of the one README command that starts with `first` and has `having`."""
    found = [argv for where, argv in shown_commands() if where.startswith("README.md:") and argv[:1] == [first]
             and all(flag in argv for flag in having)]
    assert len(found) == 1, f"README.md shows {len(found)} `photon-jax {first} {' '.join(having)}` commands"
    return found[0]


def swapped(argv: list[str], values: dict[str, str]) -> list[str]:
    """argv with the value of each flag (`--workdir`) or override key (`data.data_dir`) replaced."""
    out = list(argv)
    for key, value in values.items():
        if key.startswith("--"):
            assert key in out, f"the README's command has no {key}"
            out[out.index(key) + 1] = value
        else:
            index = [i for i, word in enumerate(out) if word.startswith(key + "=")]
            assert index, f"the README's command has no {key}=..."
            out[index[0]] = f"{key}={value}"
    return out


def readme_curl() -> list[str]:
    lines = [line for block in re.findall(r"```bash\n(.*?)```", README, re.S)
             for _, line in logical_lines(block) if line.startswith("curl ")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def readme_python_client() -> str:
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "OpenAI(" in b]
    assert len(blocks) == 1, blocks
    return blocks[0]


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory):
    """The README's sharded training command run on a few pages of plays: (its argv, the run directory).
    The serve test then serves this run, as a reader may serve any run of the road."""
    root = tmp_path_factory.mktemp("readme")
    corpus = root / "plays"
    corpus.mkdir()
    for path in shakespeare_files()[:4]:
        (corpus / path.name).write_text(path.read_text(encoding="utf-8")[:6000], encoding="utf-8")
    argv = swapped(readme_command("train", "--mesh", "--cpu-devices"),
                   {"--workdir": str(root / "run"), "data.data_dir": str(root / "data")})  # prepared on first use
    # the 8 devices must come from --cpu-devices, not from the tests' XLA_FLAGS (conftest.py)
    # (XLA reads a blank XLA_FLAGS as a file name and aborts: CI's own XLA_FLAGS may hold only that flag)
    env = dict(os.environ, **FAST_COMPILE)
    other_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.pop("XLA_FLAGS", "")).split()
    if other_flags:
        env["XLA_FLAGS"] = " ".join(other_flags)
    proc = subprocess.run([str(CONSOLE_SCRIPT), *argv, *TINY, f"data.corpus={corpus}"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return argv, root / "run"


def test_the_readme_trains_on_a_mesh_of_8_cpu_devices(mesh_run):
    argv, run = mesh_run
    mesh = json.loads((run / "config.json").read_text())["mesh"]
    assert argv[argv.index("--mesh") + 1] == f"data={mesh['data']},fsdp={mesh['fsdp']},tensor={mesh['tensor']}"
    assert json.loads((run / "summary.json").read_text())["step"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(argv: list[str], log: Path):
    """The console script serving `argv` until /health answers 200; SIGTERM on leaving."""
    env = dict(os.environ, **FAST_COMPILE)
    with open(log, "w") as out:
        proc = subprocess.Popen([str(CONSOLE_SCRIPT), *argv], stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            port = argv[argv.index("--port") + 1]
            deadline = time.monotonic() + 300
            while True:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                time.sleep(0.3)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            proc.terminate()
            assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]


def test_the_readme_serves_the_run_and_both_clients_get_the_same_completion(mesh_run, tmp_path):
    assert shutil.which("curl"), "the README's curl line needs curl"
    argv = readme_command("serve") + ["--port", str(_free_port())]
    argv = swapped(argv, {"--workdir": str(mesh_run[1])})  # served on its saved mesh: the tests' 8 devices
    with serving(argv, tmp_path / "serve.log") as url:
        curl = subprocess.run([word.replace(README_URL, url) for word in readme_curl()], capture_output=True,
                              text=True, timeout=120)
        assert curl.returncode == 0, curl.stderr
        by_curl = json.loads(curl.stdout)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(readme_python_client().replace(README_URL, url), {})  # the README's snippet, as a reader runs it
    assert by_curl["model"] == "photon-tiny" and by_curl["usage"]["completion_tokens"] > 0, by_curl
    # both ask for the same greedy completion of the same prompt: the same text
    assert printed.getvalue() == by_curl["choices"][0]["text"] + "\n"


"""Server processes for the benchmarks that drive real servers: ours (`photon-jax serve --workdir` for the
side-by-side with vLLM in peer_vllm.py, `--preset` for `bench serve` in serve_load.py) and vLLM's (`vllm serve`
on the exported weights), each on a free loopback port.

Only the server under test may use the CPU: the others are frozen (SIGSTOP) between their turns, so an
idle engine's polling never takes cores from the one being measured, and all four stay loaded (vLLM
takes minutes to start).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from photon_jax.errors import UserError

# what each server's /metrics calls its running sequences
RUNNING_GAUGE = {"ours": "photon_serve_busy_slots", "vllm": r'vllm:num_requests_running\{[^}]*\}'}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, kind: str, argv: list[str], env: dict, log_path: Path):
        self.name, self.kind = name, kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc = subprocess.Popen(argv + ["--port", str(self.port)], stdout=open(log_path, "w"),
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.frozen = False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"{self.name} exited ({self.proc.returncode}) while starting: "
                                f"{_tail(self.log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v1/models", timeout=5).status_code == 200:
                    return
            time.sleep(1.0)
        raise UserError(f"{self.name} did not answer /v1/models within {timeout_s:g}s: {_tail(self.log_path)}")

    def running(self) -> float:
        """Sequences the server is decoding now (its own /metrics gauge)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        m = re.search(rf"^{RUNNING_GAUGE[self.kind]} (\S+)$", text, re.MULTILINE)
        return float(m[1]) if m else float("nan")

    def slot_pool(self) -> tuple[int, int]:
        """Ours: (slots, bytes per slot) from its start-up line."""
        m = re.search(r"(\d+) slots of \d+ tokens, ([\d,]+) bytes per slot", self.log_path.read_text(errors="replace"))
        if not m:
            raise UserError(f"{self.name} printed no slot pool: {_tail(self.log_path)}")
        return int(m[1]), int(m[2].replace(",", ""))

    def engine_seconds(self) -> dict:
        """Ours: the engine thread's time so far (photon_serve_engine_seconds: round, insert, decode)."""
        if self.kind != "ours":
            return {}
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {m[1]: float(m[2]) for m in re.finditer(r'^photon_serve_engine_seconds\{part="(\w+)"\} (\S+)$', text,
                                                       re.MULTILINE)}

    def freeze(self) -> None:
        if not self.frozen and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            os.killpg(self.proc.pid, signal.SIGCONT)
            self.frozen = False
            time.sleep(0.5)  # its event loops catch up before the client connects

    def stop(self) -> None:
        self.thaw()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(60)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


def ours(name: str, workdir: str, served_name: str, max_context: int, size: list[str], mode: str,
         overrides: list[str], log_dir: Path) -> Server:
    argv = [sys.executable, "-m", "photon_jax.cli.main", "serve", "--workdir", workdir, "--served-model-name",
            served_name, "--max-context", str(max_context), "--mode", mode, "--max-queue", "4096", *size,
            *overrides]
    return Server(name, "ours", argv, dict(os.environ), log_dir / f"{name}.log")


def preset(name: str, preset_name: str, mode: str | None, budget_gib: float, max_context: int, max_queue: int,
           align: bool, overrides, log_dir: Path) -> Server:
    """Ours on random weights of a preset (speed and memory do not depend on their values)."""
    argv = [sys.executable, "-m", "photon_jax.cli.main", "serve", "--preset", preset_name, "--served-model-name",
            preset_name, "--kv-budget-gib", str(budget_gib), "--max-context", str(max_context), "--max-queue",
            str(max_queue), *(["--mode", mode] if mode else []), *([] if align else ["--no-align"]), *overrides]
    return Server(name, "ours", argv, dict(os.environ), log_dir / f"{name}.log")


def vllm(name: str, vllm_bin: str, export_dir: str, served_name: str, max_context: int, kv_bytes: int,
         max_seqs: int, dtype: str, log_dir: Path) -> Server:
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CACHE_ROOT=str(log_dir / "vllm-cache"))
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override --kv-cache-memory-bytes (whole GiB only)
    argv = [vllm_bin, "serve", export_dir, "--served-model-name", served_name, "--host", "127.0.0.1",
            "--dtype", dtype, "--max-model-len", str(max_context), "--kv-cache-memory-bytes", str(kv_bytes),
            "--max-num-seqs", str(max_seqs), "--no-enable-prefix-caching"]
    return Server(name, "vllm", argv, env, log_dir / f"{name}.log")


async def poll_peak(server: Server, peak: list, stop: asyncio.Event, every_s: float) -> None:
    """peak[0] = the most running sequences the server's /metrics showed until `stop` is set."""
    while not stop.is_set():
        with contextlib.suppress(httpx.HTTPError):
            peak[0] = max(peak[0], await asyncio.to_thread(server.running))
        await asyncio.sleep(every_s)


def _tail(path: Path, lines: int = 5) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    return ""

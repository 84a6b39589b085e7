"""Runs the real flashsale binary for tests: 127.0.0.1 port 0, a temp data dir, a known secret.

    with running_server(tmp_dir) as server:
        server.addr              # "127.0.0.1:PORT", read from the line the server prints
        server.token("admin")    # minted by `flashsale token` with the server's secret

The binary is `$FLASHSALE_BIN`, else `target/debug/flashsale` (built by `cargo test`, which
`scripts/test` runs first). The server is stopped when the block exits, also on failure.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECRET = "python-client-tests-secret-of-at-least-32-bytes"
# No rate limits unless a test asks for them: tests buy fast and all come from 127.0.0.1.
NO_RATE_LIMITS = ("--buyer-purchases-per-sec", "0", "--ip-purchases-per-sec", "0",
                  "--ip-logins-per-sec", "0")
READY_PREFIX = "flashsale listening "
START_TIMEOUT_SECS = 60


def binary() -> Path:
    """The flashsale executable under test."""
    path = Path(os.environ.get("FLASHSALE_BIN") or ROOT / "target" / "debug" / "flashsale")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: build it with `cargo build` (scripts/test does), "
            "or set FLASHSALE_BIN"
        )
    return path


@dataclass
class Server:
    """A running server."""

    addr: str
    metrics_addr: str
    data_dir: Path
    log: Path

    def token(self, role: str = "admin", sub: str = "test-admin", name: str = "Test Admin") -> str:
        """A token signed with the server's secret, as an operator gets the first admin's."""
        result = subprocess.run(
            [str(binary()), "token", "--role", role, "--sub", sub, "--name", name,
             "--jwt-secret", SECRET],
            check=True, capture_output=True, text=True, timeout=30,
        )
        return result.stdout.strip()

    def env(self) -> dict[str, str]:
        """Environment for a tool that mints tokens with `flashsale token` for this server."""
        return {**os.environ, "JWT_SECRET": SECRET, "FLASHSALE": str(binary())}


@contextmanager
def running_server(data_dir: Path, extra_args: Sequence[str] = NO_RATE_LIMITS) -> Iterator[Server]:
    """Starts the server, waits for its `flashsale listening grpc=ADDR metrics=ADDR` line,
    yields it, and stops it (SIGTERM, then SIGKILL after 5 s) whatever happens."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "server.log"
    command = [str(binary()), "serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port",
               "0", "--data-dir", str(data_dir), "--jwt-secret", SECRET, *extra_args]
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file, text=True)
    try:
        yield _wait_until_listening(process, data_dir, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait_until_listening(process: subprocess.Popen, data_dir: Path, log: Path) -> Server:
    lines: queue.Queue[str | None] = queue.Queue()

    def read_stdout() -> None:
        # Keeps draining stdout for the server's whole life, so it can never block on a pipe.
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read_stdout, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=START_TIMEOUT_SECS)
        except queue.Empty:
            raise TimeoutError(f"no listening line within {START_TIMEOUT_SECS}s; log:\n"
                               + log.read_text(errors="replace")) from None
        if line is None:
            raise RuntimeError(f"the server exited ({process.wait()}) before listening; log:\n"
                               + log.read_text(errors="replace"))
        if line.startswith(READY_PREFIX):
            fields = dict(part.split("=", 1) for part in line[len(READY_PREFIX):].split())
            return Server(fields["grpc"], fields["metrics"], data_dir, log)

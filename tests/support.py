"""Shared test helpers: recorded fixtures, and a real `cilium-startup-guard serve` process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return result


class ServeProcess:
    """`python -m webhook serve` on 127.0.0.1 with an ephemeral port; stopped on exit."""

    def __init__(self, certs_dir: Path, *args: str, timeout: float = 20.0) -> None:
        self.certs_dir = certs_dir
        self.args = args
        self.timeout = timeout
        self.lines: list[str] = []
        self.port = 0

    def __enter__(self) -> ServeProcess:
        command = [sys.executable, "-m", "webhook", "serve", "--host", "127.0.0.1", "--port", "0",
                   "--certs-dir", str(self.certs_dir), *self.args]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                        cwd=Path(__file__).parent.parent)
        started = threading.Event()

        def read_stderr() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.lines.append(line)
                if match := re.search(r"Uvicorn running on https://127\.0\.0\.1:(\d+)", line):
                    self.port = int(match.group(1))
                    started.set()
            started.set()  # the process ended before it served

        threading.Thread(target=read_stderr, daemon=True).start()
        if not started.wait(self.timeout) or not self.port:
            self.__exit__()
            raise RuntimeError("serve did not start:\n" + "".join(self.lines))
        return self

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.certs_dir / "ca.crt"

    def log_entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

"""What the benchmarks share about the processes they start and measure: a free port, the command that runs
`cilium-startup-guard`, readings from /proc (memory, CPU time, the CPU model), and a stop that waits for the exit.
Imported by the scripts beside it, each run as `python bench/<script>.py`; stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def guard_command() -> list[str]:
    """`cilium-startup-guard` as installed beside this interpreter, else `python -m webhook`."""
    script = Path(sys.executable).with_name("cilium-startup-guard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "webhook"]


def status_kib(pid: int, field_name: str) -> int | None:
    """A field of /proc/PID/status in KiB, such as VmRSS (resident now) or VmHWM (the peak); None when absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return None


def memory_mib(pid: int, field_name: str) -> float:
    kib = status_kib(pid, field_name)
    if kib is None:
        raise RuntimeError(f"no {field_name} for {pid}")
    return kib / 1024


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def stop(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """SIGTERM, as Kubernetes stops a pod, then SIGKILL if it has not exited within `timeout` seconds; the exit
    status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode

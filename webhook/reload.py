"""Watches the serving certificate and the config file, and reloads what depends on them when they change.
Imports no FastAPI and no uvicorn: the server hands it what to reload.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from webhook.config import Settings, reload_settings
from webhook.errors import ConfigError
from webhook.metrics import Metrics

log = logging.getLogger(__name__)

FileId = tuple[str, int, int, int, int]
Fingerprint = tuple[FileId | None, ...]


class RuntimeLike(Protocol):
    """The app's Runtime, as far as a config reload needs it."""

    settings: Settings
    metrics: Metrics


def fingerprint(paths: Sequence[Path]) -> Fingerprint:
    """What identifies the current content of each file; None for a file that cannot be read now."""
    ids: list[FileId | None] = []
    for path in paths:
        try:
            resolved = path.resolve()
            st = resolved.stat()
        except OSError:
            ids.append(None)
            continue
        ids.append((str(resolved), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(ids)


@dataclass
class _Watch:
    name: str
    paths: tuple[Path, ...]
    reload: Callable[[], None]
    last: Fingerprint


# A mounted Secret or ConfigMap changes by a symlink swap of its `..data` directory; files copied by hand are
# often replaced one after the other. Polling the identity of each resolved file (path, device, inode, mtime,
# size) sees all of these, needs no inotify, and costs a few stat() calls a second.
class FileWatcher:
    """Calls a watch's reload() once for each new fingerprint of its files.

    The fingerprint is taken before reload() reads the files. A reload that fails (a certificate whose new
    key has not landed yet, a broken config) is tried again when any of the files changes again: a change
    made during the failed read shows up as a new fingerprint on the next poll, so nothing is missed, and a
    file that stays broken is reported once rather than every second.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._watches: list[_Watch] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, name: str, paths: Sequence[Path], reload: Callable[[], None]) -> None:
        """Watch `paths`, whose current content is already in use; reload() logs and counts its own result."""
        self._watches.append(_Watch(name, tuple(paths), reload, fingerprint(paths)))

    def check(self) -> None:
        for watch in self._watches:
            current = fingerprint(watch.paths)
            if current == watch.last:
                continue
            watch.last = current
            try:
                watch.reload()
            except Exception:
                log.exception("reload failed", extra={"watch": watch.name})

    def start(self) -> None:
        if self._watches and self._thread is None:
            # A thread rather than a task on the event loop: a slow volume or a YAML parse never stalls requests.
            self._thread = threading.Thread(target=self._run, name="file-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()


class ConfigReloader:
    """Re-reads the config file into the app's Runtime; a broken file leaves the last good settings in force."""

    def __init__(self, runtime: RuntimeLike) -> None:
        self.runtime = runtime

    def __call__(self) -> None:
        current = self.runtime.settings
        try:
            fresh, waiting = reload_settings(current)
        except ConfigError as err:
            self.runtime.metrics.count_config_reload(False)
            log.error("configuration rejected; the last good configuration stays in force",
                      extra={"error": str(err), "mode": current.policy.mode.value})
            return
        self.runtime.settings = fresh
        self.runtime.metrics.count_config_reload(True, in_force=not waiting)
        log.info("configuration reloaded", extra={"config_file": str(current.config_file),
                                                  "mode": fresh.policy.mode.value,
                                                  "failure_mode": "allow" if fresh.allow_on_error else "deny"})
        if waiting:
            # The listener, its limits and timers are set up once: these take effect on the next start.
            log.warning("server settings changed in the configuration file are not applied until a restart",
                        extra={"keys": [f"server.{key}" for key in waiting]})


"""The floor of bench/scale.py: an ideal client that writes the gate conditions and does nothing else.

Strategic merge patches on pods/status, the same body the controller sends, over N keep-alive connections (one
thread each, pulling the next pod from a shared list); no reads, no Events. Reads the pods as JSON lines of
[namespace, name, uid] on stdin and prints one JSON object: writes, failures, seconds (first request to last
answer) and, per pod, the seconds from the start to its answer.

Stdlib and orjson only: it runs in a process of its own so that it does not share a GIL with the fake API server.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import threading
import time
from urllib.parse import urlsplit

import orjson

GATE = "startupguard.io/cilium-ready"


def patch_body(uid: str) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return orjson.dumps({"metadata": {"uid": uid}, "status": {"conditions": [{
        "type": GATE, "status": "True", "reason": "CiliumManaged",
        "message": "Cilium manages this pod: its CiliumEndpoint is ready.",
        "lastTransitionTime": stamp, "lastProbeTime": None}]}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    pods = [orjson.loads(line) for line in sys.stdin if line.strip()]
    server = urlsplit(args.url)
    lock = threading.Lock()
    todo = list(reversed(pods))
    done: dict[str, float] = {}
    failures: list[int] = []
    started = time.monotonic()

    def work() -> None:
        connection = http.client.HTTPConnection(server.hostname or "127.0.0.1", server.port or 80, timeout=30)
        while True:
            with lock:
                if not todo:
                    break
                namespace, name, uid = todo.pop()
            connection.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/status", patch_body(uid),
                               {"Content-Type": "application/strategic-merge-patch+json",
                                "Accept": "application/json"})
            response = connection.getresponse()
            response.read()
            with lock:
                if response.status == 200:
                    done[f"{namespace}/{name}"] = time.monotonic() - started
                else:
                    failures.append(response.status)
        connection.close()

    threads = [threading.Thread(target=work) for _ in range(args.connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(orjson.dumps({"writes": len(done), "failures": len(failures), "seconds": time.monotonic() - started,
                        "done": done}).decode())


if __name__ == "__main__":
    main()

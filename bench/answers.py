"""Answer size and policy time for one huge review: bounded answers, bounded work.

    .venv/bin/python bench/answers.py [--tolerations N] [--repeat R]

Builds a DaemonSet CREATE review (the shape of tests/support.daemonset_review) with N distinct blanket NoExecute
tolerations (`tolerationSeconds` 0..N-1; 100 000 by default: a 6.9 MB request), and for each mode and endpoint
prints the request size, the answer size, how many warnings and patch operations the answer holds, and the median
time of parse + policy + encoding in this process (no HTTP). Run it under `flock /tmp/bench.lock`.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import daemonset_review
from webhook import admission
from webhook.enums import Endpoint
from webhook.policy import Mode, PolicyConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tolerations", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    tolerations = [{"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": i}
                   for i in range(args.tolerations)]
    body = orjson.dumps(daemonset_review(tolerations=tolerations))
    print(f"request: {len(body)} bytes, {args.tolerations} blanket tolerations")
    print(f"{'mode':6} {'endpoint':9} {'answer bytes':>12} {'warnings':>8} {'patch ops':>9} {'ms':>8}")
    for mode in Mode:
        for endpoint in Endpoint:
            times = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                review = admission.parse_review(body)
                decision = admission.decide(review, PolicyConfig(mode=mode), endpoint)
                answer = orjson.dumps(admission.build_response(review.uid, decision, endpoint))
                times.append((time.perf_counter() - started) * 1000)
            response = orjson.loads(answer)["response"]
            ops = len(orjson.loads(base64.b64decode(response["patch"]))) if "patch" in response else 0
            print(f"{mode.value:6} {endpoint.value:9} {len(answer):12} {len(response.get('warnings', [])):8} "
                  f"{ops:9} {statistics.median(times):8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

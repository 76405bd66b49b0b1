"""How long the README's first command takes to fail when the hub cannot be reached.

`clipshift ingest PHOTO` with the default model (openai/clip-vit-base-patch32), which is not
in the local cache here, timed as a subprocess (Python start and imports included) in three
kinds of offline, side by side with `clipshift --version`, the floor any command pays:
- HF_HUB_OFFLINE=1: the user said so;
- the hub refuses the connection (HF_ENDPOINT on a closed loopback port);
- the hub's address cannot be reached (HF_ENDPOINT in TEST-NET-1). Where a network silently
  drops the packets instead, the probe waits its timeout (HUB_PROBE_SECONDS) on top.

    python benchmarks/offline.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clipshift.hub import HUB_PROBE_SECONDS  # noqa: E402

CASES = {
    "HF_HUB_OFFLINE=1": {"HF_HUB_OFFLINE": "1"},
    "hub refuses the connection": {"HF_ENDPOINT": "http://127.0.0.1:9"},
    # TEST-NET-1 (RFC 5737): reserved for documentation, routed nowhere
    "hub address unreachable": {"HF_ENDPOINT": "http://192.0.2.1"},
}


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, (done.stdout + done.stderr).strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from PIL import Image
    from skimage import data

    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    base["HF_HOME"] = tempfile.mkdtemp(prefix="clipshift-offline-hf-")  # an empty cache
    clipshift = [sys.executable, str(ROOT / "cli.py")]
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "astronaut.png"
        Image.fromarray(data.astronaut()).save(photo)
        rows = [("clipshift --version (the floor)", [*clipshift, "--version"], {})]
        for name, extra in CASES.items():
            command = [*clipshift, "ingest", str(photo), "--db", str(Path(tmp) / "db")]
            rows.append((f"ingest, {name}", command, extra))
        print(f"median of {args.repeat} runs; hub probe timeout {HUB_PROBE_SECONDS} s")
        for label, command, extra in rows:
            times, last = [], ""
            for _ in range(args.repeat):
                seconds, last = timed(command, {**base, **extra})
                times.append(seconds)
            print(f"{label:45s} {statistics.median(times):6.2f} s   {last[:70]}")
        assert not (Path(tmp) / "db").exists(), "a failed ingest wrote a store"


if __name__ == "__main__":
    main()

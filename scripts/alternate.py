#!/usr/bin/env python3
"""Two builds of `examples/in_memory` side by side: bare, the first build
guarded and the second guarded, run in turn, so that the VM's drifts fall
on all three alike. Prints the medians and the fastest runs in ns a
request, and the ratios. Issue 28 used it to compare a build with the one
before it:

    cargo build --release --example in_memory
    cp target/release/examples/in_memory /tmp/in_memory.new
    # ... the other build, in a worktree:
    git worktree add /tmp/base <rev> && (cd /tmp/base &&
        CARGO_TARGET_DIR=/tmp/base-target cargo build --release --example in_memory)
    python3 scripts/alternate.py /tmp/base-target/release/examples/in_memory \\
        /tmp/in_memory.new read 200000 15

Arguments: the first build, the second build, `read` or `drop`, requests
a run, runs of each.
"""
import statistics
import subprocess
import sys
import time


def main():
    base, new, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    requests = int(sys.argv[4]) if len(sys.argv) > 4 else 200_000
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 11
    runs = {"bare": (new, "bare"), "base": (base, "guarded"), "new": (new, "guarded")}
    ns = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (binary, who) in runs.items():
            start = time.perf_counter()
            subprocess.run([binary, who, mode, str(requests)], stdout=subprocess.DEVNULL, check=True)
            ns[name].append((time.perf_counter() - start) * 1e9 / requests)
    med = {name: statistics.median(v) for name, v in ns.items()}
    low = {name: min(v) for name, v in ns.items()}
    pairs = [n / b for b, n in zip(ns["base"], ns["new"])]
    print(
        f"{mode}: medians bare {med['bare']:.0f}, base {med['base']:.0f}, new {med['new']:.0f} ns; "
        f"new/base {statistics.median(pairs):.3f} ({min(pairs):.2f}-{max(pairs):.2f})"
    )
    print(
        f"  fastest: bare {low['bare']:.0f}, base {low['base']:.0f}, new {low['new']:.0f} ns; "
        f"base/bare {low['base'] / low['bare']:.2f}, new/bare {low['new'] / low['bare']:.2f}"
    )


if __name__ == "__main__":
    main()

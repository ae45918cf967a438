#!/usr/bin/env python3
"""Atomic read-modify-write instructions a request, from a callgrind run.

Counts how often each `lock`-prefixed instruction (and `xchg` with memory,
which is locked without the prefix) of a binary ran, from callgrind's
per-instruction counts, and prints the count a request and the functions
they ran in. Issue 28 used it to count what an in-memory guarded request
pays in atomic operations besides its instructions:

    cargo build --release --example in_memory
    valgrind --tool=callgrind --dump-instr=yes \\
        --callgrind-out-file=/tmp/cg.out \\
        target/release/examples/in_memory guarded read 40000
    python3 scripts/atomics.py /tmp/cg.out target/release/examples/in_memory 40000

Needs `objdump` (binutils). Counts cover the binary itself, not the
shared libraries it calls.
"""
import collections
import re
import subprocess
import sys


def executed(callgrind_out, binary):
    """Instruction address (in the binary) -> times it ran."""
    counts = collections.Counter()
    names = {}
    ob = None
    pos = 0
    skip = False

    def name(spec):
        m = re.match(r"\((\d+)\)(?: (.*))?", spec)
        if not m:
            return spec
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1))

    wanted = binary.split("/")[-1]
    with open(callgrind_out) as f:
        for line in f:
            if line.startswith("ob="):
                ob = name(line[3:].strip())
                continue
            if line.startswith("cob="):
                name(line[4:].strip())
                continue
            if line.startswith("calls="):
                # The next cost line is the call's inclusive cost.
                skip = True
                continue
            if not line or line[0] not in "0123456789+-*":
                continue
            parts = line.split()
            at = parts[0]
            if at.startswith("0x"):
                pos = int(at, 16)
            elif at[0] in "+-":
                step = int(at[1:], 0)
                pos = pos + step if at[0] == "+" else pos - step
            if skip:
                skip = False
                continue
            if len(parts) >= 3 and ob and ob.endswith(wanted):
                counts[pos] += int(parts[2])
    return counts


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    callgrind_out, binary, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
    counts = executed(callgrind_out, binary)
    dis = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", binary],
        capture_output=True, text=True, check=True,
    ).stdout
    function = None
    per_function = collections.Counter()
    for line in dis.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:", line)
        if m:
            function = m.group(1)
            continue
        m = re.match(r"\s*([0-9a-f]+):\s+(.*)", line)
        if not m:
            continue
        ins = m.group(2)
        if ins.startswith("lock") or (re.match(r"xchg\s", ins) and "(" in ins):
            ran = counts.get(int(m.group(1), 16), 0)
            if ran:
                per_function[function] += ran
    total = sum(per_function.values())
    print(f"atomic read-modify-writes a request: {total / requests:.2f}")
    for function, ran in per_function.most_common():
        if ran / requests >= 0.05:
            print(f"{ran / requests:6.2f}  {function[:150]}")


if __name__ == "__main__":
    main()

#!/bin/sh
# Compares the guard of this tree with the guard at revision REV (default:
# HEAD), both built into one binary and run in turn in one process
# (`scripts/ab`): a difference of a few per cent shows, where separate
# runs on a shared VM drift by tens of per cent.
#
#   scripts/ab.sh 61b5898 read     # or drop; then rounds, requests a batch
#   HEADERS=1 scripts/ab.sh 61b5898 read    # requests with four headers
#
# Checks REV out into target/ab-base (a git worktree, version set to 0.0.1
# there so that both builds can be linked into one binary).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
rev=${1:-HEAD}
shift || true
base="$root/target/ab-base"
if [ -d "$base" ]; then
    git -C "$root" worktree remove --force "$base"
fi
git -C "$root" worktree add --detach "$base" "$rev" >/dev/null
sed -i 's/^version = ".*"/version = "0.0.1"/' "$base/Cargo.toml"
cd "$root/scripts/ab"
CARGO_TARGET_DIR="$root/target/ab" cargo build --release --quiet
"$root/target/ab/release/poolguard-ab" "${1:-read}" "${2:-31}" "${3:-20000}"

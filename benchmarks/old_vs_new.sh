#!/usr/bin/env bash
# Today's code against an older commit, same machine, same allocator settings:
#   benchmarks/old_vs_new.sh COMMIT BACKBONE BATCH [ITERS]
# Each side runs old_vs_new.py (from today's tree) twice per allocator setting: glibc's defaults,
# and freed memory kept (tokenred.timing.keep_freed_memory; the older code gets the same glibc
# settings through MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_, which glibc reads at start-up; an
# older tree that already keeps freed memory gets TOKENRED_MALLOC=default on the defaults side).
set -euo pipefail
cd "$(dirname "$0")/.."
commit=$1 backbone=$2 batch=$3 iters=${4:-5}
PY=${PY:-$PWD/.venv/bin/python}
old=$(mktemp -d)/tokenred-$commit
git worktree add -f --detach "$old" "$commit" > /dev/null
trap 'git worktree remove --force "$old"' EXIT
# the older tree maps tokenred.backbones / tokenred.methods to top-level folders in its
# pyproject; links make it importable from PYTHONPATH without installing it
for pkg in backbones methods; do [ -d "$old/$pkg" ] && ln -sfn "../$pkg" "$old/tokenred/$pkg"; done
kept="MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824"
for round in 1 2; do
  (cd /tmp && env $kept PYTHONPATH="$old" "$PY" "$OLDPWD/benchmarks/old_vs_new.py" "$backbone" "$batch" --iters "$iters" --label "$commit, kept")
  "$PY" benchmarks/old_vs_new.py "$backbone" "$batch" --iters "$iters" --label "today, kept"
  (cd /tmp && TOKENRED_MALLOC=default PYTHONPATH="$old" "$PY" "$OLDPWD/benchmarks/old_vs_new.py" "$backbone" "$batch" --iters "$iters" --label "$commit, defaults")
  TOKENRED_MALLOC=default "$PY" benchmarks/old_vs_new.py "$backbone" "$batch" --iters "$iters" --label "today, defaults"
done

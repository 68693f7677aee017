#!/usr/bin/env bash
# Resolve a fully pinned lock for the TFX 1.16 stack on Python 3.11.
#
# Why: tfx 1.16.0 and ml-pipelines-sdk 1.16.0 declare Requires-Python < 3.11, although every native
# wheel they need (tfx-bsl, TFDV, MLMD, TF 2.16) exists for 3.11 and the stack runs on 3.11. TFX 1.17+
# cannot run on glibc 2.36 (TFDV wheels need glibc 2.38). A resolver refuses tfx 1.16 on 3.11, so this
# script resolves against copies of those two wheels whose only change is a relaxed Requires-Python,
# then strips the local "+py311" tag so that the lock names the real PyPI releases.
#
# Usage: tools/resolve.sh [REQUIREMENTS_IN [LOCK_OUT]]
#   defaults: requirements.in and requirements.lock at the repository root.
#   REQUIREMENTS_IN lists top-level needs; write tfx as "tfx[kfp]==1.16.0" as usual.
# Needs network access to PyPI (it downloads the two tfx wheels and resolves with uv); `make setup`
# then installs the result with:
#   pip install --no-deps --ignore-requires-python -r requirements.lock
# requirements-test.lock (pytest, hypothesis and their pins) is kept by hand next to it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
in=$(realpath "${1:-$repo/requirements.in}"); out=${2:-$repo/requirements.lock}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q uv
mkdir -p "$work/dl" "$work/links"
"$work/venv/bin/pip" download -q --no-deps --ignore-requires-python -d "$work/dl" \
  tfx==1.16.0 ml-pipelines-sdk==1.16.0
for wheel in "$work"/dl/*.whl; do
  unpacked=$work/unpacked; rm -rf "$unpacked"; mkdir "$unpacked"
  (cd "$unpacked" && python3 -m zipfile -e "$wheel" .)
  info=$(cd "$unpacked" && ls -d *.dist-info); name=${info%-1.16.0.dist-info}
  sed -i -e 's/^Requires-Python: .*/Requires-Python: >=3.9,<3.14/' \
         -e 's/^Version: 1.16.0$/Version: 1.16.0+py311/' "$unpacked/$info/METADATA"
  mv "$unpacked/$info" "$unpacked/$name-1.16.0+py311.dist-info"
  : > "$unpacked/$name-1.16.0+py311.dist-info/RECORD"
  (cd "$unpacked" && python3 -m zipfile -c "$work/links/$name-1.16.0+py311-py3-none-any.whl" .)
done
sed -E 's/^(tfx(\[[^]]*\])?|ml-pipelines-sdk)==1\.16\.0\b/\1==1.16.0+py311/' "$in" > "$work/req.in"
grep -q '^ml-pipelines-sdk' "$work/req.in" || echo 'ml-pipelines-sdk==1.16.0+py311' >> "$work/req.in"
echo 'ml-pipelines-sdk==1.16.0+py311' > "$work/override.txt"
"$work/venv/bin/uv" pip compile "$work/req.in" --find-links "$work/links" --override "$work/override.txt" \
  --python-version 3.11 --python-platform x86_64-manylinux_2_36 --no-header --no-annotate -o "$work/lock.txt"
sed -e 's/+py311//' "$work/lock.txt" > "$out"
echo "wrote $(grep -c '==' "$out") pins to $out"

#!/usr/bin/env bash
# Prepares the GPU kit on the build machine (network: PyPI and Debian): one git-ignored folder
# with everything scripts/gpu-check.sh needs on a GPU machine that reaches no registry.
#   wheels/  what featx needs there beyond the machine's own packages (scripts/gpu-target.txt),
#            for CPython $GPU_KIT_PYTHON (3.12, the GPU machine's), manylinux x86-64
#   debs/    TurboJPEG runtime + headers (bookworm libturbojpeg0, libturbojpeg0-dev) and the ONNX
#            Runtime C/C++ headers (trixie libonnxruntime-dev); gpu-check.sh unpacks them into a
#            private prefix, never into /
#   commit   the source commit the kit was made at (the GPU machine's copy has no .git)
# Usage: scripts/gpu-prepare.sh [KIT_DIR]   (default: gpu-kit). Pass KIT_DIR to the GPU machine
# as a carried path; it and the source tree must stay under 50 MiB together.
set -euo pipefail
cd "$(dirname "$0")/.."

KIT=${1:-gpu-kit}
GPU_KIT_PYTHON=${GPU_KIT_PYTHON:-3.12}
# Any interpreter with pip and packaging runs the helper; the wheels are chosen for
# GPU_KIT_PYTHON, not for it.
PYTHON=${PYTHON:-python3}
LIMIT_MIB=50

rm -rf "$KIT"
mkdir -p "$KIT/wheels" "$KIT/debs"
"$PYTHON" scripts/gpu_kit.py carry "$KIT/wheels" --python-version "$GPU_KIT_PYTHON"

apt_work=$(mktemp -d)
trap 'rm -rf "$apt_work"' EXIT
mkdir -p "$apt_work/lists/partial" "$apt_work/archives/partial" "$apt_work/parts"
# A private apt configuration (no root, the system's sources untouched): bookworm for TurboJPEG
# 2.1 (the API csrc/jpeg.cc uses, glibc 2.14 and up), trixie for the ORT headers bookworm lacks.
cat >"$apt_work/sources.list" <<SOURCES
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
SOURCES
apt_private=(-o Dir::Etc::SourceList="$apt_work/sources.list" -o Dir::Etc::SourceParts="$apt_work/parts"
  -o Dir::State::Lists="$apt_work/lists" -o Dir::Cache::Archives="$apt_work/archives"
  -o APT::Sandbox::User="$(id -un)")
apt-get "${apt_private[@]}" update -qq
(cd "$KIT/debs" && apt-get "${apt_private[@]}" download -qq \
  libturbojpeg0/bookworm libturbojpeg0-dev/bookworm libonnxruntime-dev/trixie)

git rev-parse --short HEAD >"$KIT/commit"
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "gpu-prepare: warning: uncommitted changes; results will name $(cat "$KIT/commit")" >&2
fi

kit_bytes=$(du -sb "$KIT" | cut -f1)
# What the GPU machine receives besides the kit: tracked and untracked, not ignored, files.
tree_bytes=$(git ls-files -z --cached --others --exclude-standard |
  du -cb --files0-from=- | tail -1 | cut -f1)
total_mib=$(( (kit_bytes + tree_bytes + 1048575) / 1048576 ))
ls -l "$KIT/wheels" "$KIT/debs" | awk 'NF > 5 {print "  " $5 "\t" $NF}'
awk -v kit="$kit_bytes" -v tree="$tree_bytes" -v dir="$KIT" -v limit="$LIMIT_MIB" 'BEGIN {
  printf "gpu-prepare: %s: %.1f MiB; with the source tree (%.1f MiB): %.1f MiB (limit %d MiB)\n",
    dir, kit / 1048576, tree / 1048576, (kit + tree) / 1048576, limit }'
if [ "$total_mib" -gt "$LIMIT_MIB" ]; then
  echo "gpu-prepare: the kit and the source tree exceed $LIMIT_MIB MiB" >&2
  exit 1
fi

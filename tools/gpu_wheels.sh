#!/usr/bin/env bash
# Fetch, as wheels into .whl/ (git-ignored), the Python packages gantrain needs that the GPU machine's image
# lacks (docs/GPU_CHECK.md). That machine has no network: tools/gpu_check.sh installs these from .whl/ with
# `pip install --no-index`. Run it here, in the checkout the device tool sends, before the device call.
#
#   tools/gpu_wheels.sh [--python-version 3.12] [--optional]
#
# Always: hydra-core, omegaconf, antlr4-python3-runtime==4.9.3 (not in the image), torch-fidelity (FID/KID).
# --optional adds tensorboard, torchmetrics and tqdm, which the image had when last read
# (/work/.library/device/KINDS.md); carry them only if a run there says they are missing.
# Versions: those of the local environment where it has them (so the GPU run uses what the tests here used).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=3.12
OPTIONAL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYVER="$2"; shift 2 ;;
    --optional) OPTIONAL=1; shift ;;
    *) echo "gpu_wheels.sh: unknown argument $1 (use --python-version X.Y, --optional)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEST=.whl
PACKAGES=(hydra-core omegaconf antlr4-python3-runtime torch-fidelity)
[ "$OPTIONAL" = 1 ] && PACKAGES+=(tensorboard tensorboard-data-server torchmetrics lightning-utilities tqdm)
declare -A PIN=([antlr4-python3-runtime]=4.9.3)  # omegaconf 2.3 requires exactly this one

git check-ignore -q "$DEST/x.whl" || { echo "gpu_wheels.sh: $DEST/ is not git-ignored (.gitignore)" >&2; exit 1; }
rm -rf "$DEST" && mkdir -p "$DEST"
for name in "${PACKAGES[@]}"; do
  version=${PIN[$name]:-$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')}
  spec=$name${version:+==$version}
  # pure-Python wheels; the platform tags only matter for tensorboard-data-server (manylinux x86-64)
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
       --platform any -d "$DEST" "$spec"; then
    # antlr4-python3-runtime 4.9.3 is published as a source archive only: build its (pure-Python) wheel here
    echo "gpu_wheels.sh: no wheel of $spec on the index; building one from its source archive"
    "$PY" -m pip wheel -q --no-deps --no-binary=:all: -w "$DEST" "$spec"
  fi
done
ls -l "$DEST"
du -sh "$DEST"

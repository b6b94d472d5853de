#!/usr/bin/env bash
# Create .venv in the repo and install Gen3D with its Blender and test extras, at the locked versions.
#
#   GEN3D_TORCH   pip requirement(s) for torch (default: torch==2.13.0). Examples:
#                   GEN3D_TORCH="torch==2.13.0 --index-url <CUDA wheel index>"   (NVIDIA)
#                   GEN3D_TORCH="torch"                                          (macOS: MPS build)
#   GEN3D_EXTRAS  extras to install (default: blender,dev; add gpu for gsplat on CUDA)
#   PYTHON        interpreter to create the venv with (default: python3.11; bpy needs 3.11)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
TORCH=${GEN3D_TORCH:-torch==2.13.0}
EXTRAS=${GEN3D_EXTRAS:-blender,dev}
stamp=.venv/.gen3d-installed
want="$TORCH|$EXTRAS|$(cat pyproject.toml requirements.lock | cksum)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
echo "setup: installing $TORCH"
# torch first, so the project's 'torch>=...' requirement is already met by the chosen build.
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q $TORCH
echo "setup: installing gen3d[$EXTRAS] at the versions of requirements.lock"
# The lock is a constraints file: exactly the tested versions of whatever the chosen extras need.
.venv/bin/python -m pip install -q -c requirements.lock -e ".[$EXTRAS]"
echo "$want" > "$stamp"
echo "setup: done (.venv)"

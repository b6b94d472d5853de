#!/usr/bin/env bash
# Regenerate requirements.lock: resolve gen3d[blender,dev,cluster,tracking] with pip's own resolver in a
# throwaway venv (torch preinstalled from GEN3D_TORCH, like setup.sh) and freeze the exact versions it chose.
# torch itself stays out of the lock (GEN3D_TORCH picks the build); its tested version is recorded in the header.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
TORCH=${GEN3D_TORCH:-torch==2.13.0}
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
"$PYTHON" -m venv "$venv"
# shellcheck disable=SC2086
"$venv/bin/python" -m pip install -q $TORCH
"$venv/bin/python" -m pip install -q ".[blender,dev,cluster,tracking]"
torch_version=$("$venv/bin/python" -c "import torch; print(torch.__version__)")
{
  echo "# Exact versions of everything Gen3D installs, resolved by pip for Python 3.11 on $(uname -sm)."
  echo "# Tested with torch==$torch_version (installed first by scripts/setup.sh from GEN3D_TORCH, not pinned here)."
  echo "# Regenerate with: make lock"
  "$venv/bin/python" -m pip freeze --exclude-editable | grep -viE '^(gen3d|torch)( @|==)' | sort -f
} > requirements.lock.tmp
mv requirements.lock.tmp requirements.lock
echo "lock: wrote requirements.lock ($(grep -vc '^#' requirements.lock) packages, torch $torch_version)"

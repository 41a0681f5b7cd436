#!/usr/bin/env bash
# Build cbo_interfaces, cbo_common, cbo_ros and server_node with colcon in a workspace that contains this
# repository (the standard ROS 2 path). Usage:
#   scripts/colcon_build.sh [WORKSPACE]     (default: build/colcon_ws)
# With a regular ROS 2 install (Jazzy/Kilted) source /opt/ros/<distro>/setup.bash first; here the
# pip ROS 2 of .venv is used (run scripts/setup.sh first).
#
# colcon stops looking for packages once it finds one, and this repository is itself the cbo_ros
# package, so the nested packages are passed explicitly with --paths.
#
# After the build, the generated artifacts (models, calibration, media of $CBO_ARTIFACTS or the
# checkout's artifacts/) are copied into install/cbo_ros/share/cbo_ros/artifacts, where the
# installed nodes find them without CBO_ARTIFACTS (CBO_LINK_ARTIFACTS=1: symlink instead).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WS="${1:-$ROOT/build/colcon_ws}"
[ $# -eq 0 ] || shift
mkdir -p "$WS/src"
[ -e "$WS/src/cbo_ros" ] || ln -s "$ROOT" "$WS/src/cbo_ros"
cmake_args=(-DBUILD_TESTING=OFF)
if [ -z "${ROS_DISTRO:-}" ]; then
  # pip ROS 2: colcon, ament and rosidl come from the virtualenv.
  if [ -f "$ROOT/cbo_env.sh" ]; then
    # shellcheck disable=SC1091
    source "$ROOT/cbo_env.sh"
  elif [ -z "${VIRTUAL_ENV:-}" ]; then
    echo "colcon_build.sh: no ROS 2 (source /opt/ros/<distro>/setup.bash) and no $ROOT/cbo_env.sh" \
         "(run scripts/setup.sh first)" >&2
    exit 1
  fi
  export CMAKE_PREFIX_PATH="$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  cmake_args+=("-DPython3_EXECUTABLE=$VIRTUAL_ENV/bin/python")
fi
cd "$WS"
colcon build --paths src/cbo_ros src/cbo_ros/cbo_interfaces src/cbo_ros/cbo_common src/cbo_ros/server_node \
  --cmake-args "${cmake_args[@]}" "$@"
artifacts="${CBO_ARTIFACTS:-$ROOT/artifacts}"
share_artifacts="$WS/install/cbo_ros/share/cbo_ros/artifacts"
if ls "$artifacts"/models/*.onnx >/dev/null 2>&1; then
  # shellcheck disable=SC1091
  ( set +u; source "$WS/install/setup.bash"
    python3 -m cbo_ros.assets.prepare --artifacts "$artifacts" --install-into "$share_artifacts" \
      ${CBO_LINK_ARTIFACTS:+--link} )
else
  echo "note: no generated artifacts in $artifacts (run scripts/setup.sh); then install them with:"
  echo "  cbo_prepare_assets --artifacts <dir> --install-into $share_artifacts"
fi
echo "built: source $WS/install/setup.bash"

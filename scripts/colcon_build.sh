#!/usr/bin/env bash
# Build cbo_interfaces, cbo_common, cbo_ros and server_node with colcon in a workspace that contains this
# repository (the standard ROS 2 path). Usage:
#   scripts/colcon_build.sh [WORKSPACE]     (default: build/colcon_ws)
# With a regular ROS 2 install (Jazzy/Kilted) source /opt/ros/<distro>/setup.bash first; here the
# pip ROS 2 of .venv is used (run scripts/setup.sh first).
#
# colcon stops looking for packages once it finds one, and this repository is itself the cbo_ros
# package, so the nested packages are passed explicitly with --paths.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WS="${1:-$ROOT/build/colcon_ws}"
[ $# -eq 0 ] || shift
mkdir -p "$WS/src"
[ -e "$WS/src/cbo_ros" ] || ln -s "$ROOT" "$WS/src/cbo_ros"
cmake_args=(-DBUILD_TESTING=OFF)
if [ -z "${ROS_DISTRO:-}" ]; then
  # pip ROS 2: colcon, ament and rosidl come from the virtualenv.
  # shellcheck disable=SC1091
  source "$ROOT/cbo_env.sh"
  export CMAKE_PREFIX_PATH="$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  cmake_args+=("-DPython3_EXECUTABLE=$VIRTUAL_ENV/bin/python")
fi
cd "$WS"
colcon build --paths src/cbo_ros src/cbo_ros/cbo_interfaces src/cbo_ros/cbo_common src/cbo_ros/server_node \
  --cmake-args "${cmake_args[@]}" "$@"
echo "built: source $WS/install/setup.bash"

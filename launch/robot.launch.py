"""Robot side of cbo_ros: camera, NPU classifier, network monitor and offload planner.

    ros2 launch cbo_ros robot.launch.py namespace:=robot1 source:=bikes.mp4 mode:=once

All nodes read ``params_file`` (default: cbo_ros/config/robot.yaml, sections keyed ``/**/<node>``
so they apply under any namespace); the camera arguments ``source``, ``mode`` and
``wait_for_subscribers`` override the file's values only when given. ``robot_bringup`` starts
the same nodes from the same file, one process per node like this file (``--single-process``:
one executor), where ``ros2 launch`` is not installed.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    namespace = LaunchConfiguration('namespace')
    params_file = LaunchConfiguration('params_file')
    use_sim_time = LaunchConfiguration('use_sim_time')
    log_level = LaunchConfiguration('log_level')
    common = {'use_sim_time': use_sim_time}

    def robot_node(executable, extra=None):
        return Node(package='cbo_ros', executable=executable, name=executable,
                    namespace=namespace, output='screen',
                    parameters=[params_file, common] + ([extra] if extra else []),
                    ros_arguments=['--log-level', log_level])

    def camera_node(context):
        # A launch argument is parsed as YAML: `source:=0` (a V4L2 index) must stay a string.
        given = {'source': (LaunchConfiguration('source'), str),
                 'mode': (LaunchConfiguration('mode'), str),
                 'wait_for_subscribers': (LaunchConfiguration('wait_for_subscribers'), int)}
        overrides = {name: ParameterValue(value, value_type=value_type)
                     for name, (value, value_type) in given.items() if value.perform(context)}
        return [robot_node('camera_node', overrides)]

    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace of the robot nodes'),
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution([FindPackageShare('cbo_ros'), 'config',
                                                'robot.yaml']),
            description='Parameter file of the robot nodes'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Use /clock (e.g. when playing a rosbag)'),
        DeclareLaunchArgument('log_level', default_value='info', description='Logging level'),
        DeclareLaunchArgument('source', default_value='',
                              description='Camera source: video, device, image folder, rosbag2 '
                                          "(empty: params_file's)"),
        DeclareLaunchArgument('mode', default_value='',
                              description="Camera mode: loop|once (empty: params_file's)"),
        DeclareLaunchArgument(
            'wait_for_subscribers', default_value='',
            description='The camera waits for this many image_raw readers (0: publish at once; '
                        "empty: params_file's)"),
        OpaqueFunction(function=camera_node),
        robot_node('npu_classifier_node'),
        robot_node('network_monitor_node'),
        robot_node('offload_planner_node'),
    ])

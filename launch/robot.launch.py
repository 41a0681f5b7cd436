"""Robot side of cbo_ros: camera, NPU classifier, network monitor and offload planner.

    ros2 launch cbo_ros robot.launch.py namespace:=robot1 source:=bikes.mp4 mode:=once

All nodes read ``params_file`` (default: cbo_ros/config/robot.yaml, sections keyed ``/**/<node>``
so they apply under any namespace). ``robot_bringup`` starts the same nodes from the same file, one
process per node like this file (``--single-process``: one executor), where ``ros2 launch`` is not
installed.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
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
                    arguments=['--ros-args', '--log-level', log_level])

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
        DeclareLaunchArgument('source', default_value='bikes.mp4',
                              description='Camera source: video, device, image folder, rosbag2'),
        DeclareLaunchArgument('mode', default_value='loop', description="Camera mode: loop|once"),
        robot_node('camera_node', {'source': LaunchConfiguration('source'),
                                   'mode': LaunchConfiguration('mode')}),
        robot_node('npu_classifier_node'),
        robot_node('network_monitor_node'),
        robot_node('offload_planner_node'),
    ])

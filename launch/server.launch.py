"""Workstation side of cbo_ros: the offload server.

    ros2 launch cbo_ros server.launch.py namespace:=robot1
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace (the robot\'s, so it finds `offload`)'),
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution([FindPackageShare('cbo_ros'), 'config',
                                                'server.yaml']),
            description='Parameter file of the offload server'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Use /clock'),
        DeclareLaunchArgument('log_level', default_value='info', description='Logging level'),
        Node(package='server_node', executable='server_node', name='offload_server',
             namespace=LaunchConfiguration('namespace'), output='screen',
             parameters=[LaunchConfiguration('params_file'),
                         {'use_sim_time': LaunchConfiguration('use_sim_time')}],
             ros_arguments=['--log-level', LaunchConfiguration('log_level')]),
    ])

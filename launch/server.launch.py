"""Workstation side of cbo_ros: the offload server.

    ros2 launch cbo_ros server.launch.py namespace:=robot1

The Fast DDS profile is set through the environment as in robot.launch.py
(``FASTDDS_DEFAULT_PROFILES_FILE`` unless already set; argument ``fastdds_profile``), and so is
SROS2 (``security:=true``: enclave ``<enclave_root>/offload_server``; docs/security.md).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
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
        DeclareLaunchArgument(
            'fastdds_profile',
            default_value=EnvironmentVariable(
                'FASTDDS_DEFAULT_PROFILES_FILE',
                default_value=PathJoinSubstitution([FindPackageShare('cbo_ros'), 'config',
                                                    'fastdds_profile.xml'])),
            description='Fast DDS XML profile (default: $FASTDDS_DEFAULT_PROFILES_FILE if set, '
                        'else the installed config/fastdds_profile.xml)'),
        DeclareLaunchArgument(
            'security', default_value='false',
            description='SROS2: run the nodes with DDS-Security (enclaves under enclave_root in '
                        'keystore; needs a ROS 2 install whose Fast DDS has the security '
                        'plugins; docs/security.md)'),
        DeclareLaunchArgument(
            'keystore', default_value=EnvironmentVariable('ROS_SECURITY_KEYSTORE',
                                                          default_value=''),
            description='SROS2 keystore (default: $ROS_SECURITY_KEYSTORE)'),
        DeclareLaunchArgument('enclave_root', default_value='/cbo_ros',
                              description='SROS2: each node uses the enclave '
                                          '<enclave_root>/<node name>'),
        SetEnvironmentVariable('ROS_SECURITY_ENABLE', 'true',
                               condition=IfCondition(LaunchConfiguration('security'))),
        SetEnvironmentVariable('ROS_SECURITY_STRATEGY', 'Enforce',
                               condition=IfCondition(LaunchConfiguration('security'))),
        SetEnvironmentVariable('ROS_SECURITY_KEYSTORE', LaunchConfiguration('keystore'),
                               condition=IfCondition(LaunchConfiguration('security'))),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE',
                               LaunchConfiguration('fastdds_profile')),
        SetEnvironmentVariable('RMW_FASTRTPS_PUBLICATION_MODE',
                               EnvironmentVariable('RMW_FASTRTPS_PUBLICATION_MODE',
                                                   default_value='AUTO')),
        Node(package='server_node', executable='server_node', name='offload_server',
             namespace=LaunchConfiguration('namespace'), output='screen',
             parameters=[LaunchConfiguration('params_file'),
                         {'use_sim_time': LaunchConfiguration('use_sim_time')}],
             ros_arguments=['--log-level', LaunchConfiguration('log_level'),
                            '--enclave', [LaunchConfiguration('enclave_root'),
                                          '/offload_server']]),
    ])

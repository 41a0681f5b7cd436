"""Robot and server together on one machine (what `cbo_demo` runs, minus link shaping).

    ros2 launch cbo_ros demo.launch.py mode:=once

camera_node plays the demo video of robot_params_file (``source``, default bikes.mp4 in
config/robot.yaml). Both included files set the Fast DDS profile (``fastdds_profile``).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    launch_dir = PathJoinSubstitution([FindPackageShare('cbo_ros'), 'launch'])
    config_dir = PathJoinSubstitution([FindPackageShare('cbo_ros'), 'config'])
    shared = {'namespace': LaunchConfiguration('namespace'),
              'use_sim_time': LaunchConfiguration('use_sim_time'),
              'log_level': LaunchConfiguration('log_level'),
              'security': LaunchConfiguration('security'),
              'keystore': LaunchConfiguration('keystore'),
              'enclave_root': LaunchConfiguration('enclave_root')}
    return LaunchDescription([
        DeclareLaunchArgument('namespace', default_value='', description='Namespace of all nodes'),
        DeclareLaunchArgument('robot_params_file',
                              default_value=PathJoinSubstitution([config_dir, 'robot.yaml']),
                              description='Parameter file of the robot nodes'),
        DeclareLaunchArgument('server_params_file',
                              default_value=PathJoinSubstitution([config_dir, 'server.yaml']),
                              description='Parameter file of the offload server'),
        DeclareLaunchArgument('use_sim_time', default_value='false', description='Use /clock'),
        DeclareLaunchArgument('log_level', default_value='info', description='Logging level'),
        DeclareLaunchArgument('security', default_value='false',
                              description='SROS2 enclaves for every node (docs/security.md)'),
        DeclareLaunchArgument('keystore', default_value=EnvironmentVariable(
            'ROS_SECURITY_KEYSTORE', default_value=''), description='SROS2 keystore'),
        DeclareLaunchArgument('enclave_root', default_value='/cbo_ros',
                              description='SROS2 enclave prefix'),
        DeclareLaunchArgument('source', default_value='',
                              description="Camera source (empty: robot_params_file's)"),
        DeclareLaunchArgument('mode', default_value='',
                              description="Camera mode: loop|once (empty: robot_params_file's)"),
        DeclareLaunchArgument('image_topic', default_value='image_raw',
                              description='Frames topic between the camera and its readers'),
        DeclareLaunchArgument('strategy', default_value='',
                              description="Planner strategy (empty: robot_params_file's; "
                                          'early_exit_partition[_uncalibrated]: early_exit_node)'),
        DeclareLaunchArgument('input_transport', default_value='',
                              description="raw or compressed frames (empty: robot_params_file's)"),
        DeclareLaunchArgument('keep_recorded_stamps', default_value='',
                              description='rosbag2 source: keep its recorded stamps (mode:=once)'),
        DeclareLaunchArgument('publish_clock', default_value='',
                              description='Publish /clock from the recorded time (with '
                                          'use_sim_time:=true)'),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(PathJoinSubstitution([launch_dir, 'server.launch.py'])),
            launch_arguments={**shared,
                              'params_file': LaunchConfiguration('server_params_file')}.items()),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(PathJoinSubstitution([launch_dir, 'robot.launch.py'])),
            launch_arguments={**shared, 'params_file': LaunchConfiguration('robot_params_file'),
                              'use_camera': 'true',
                              'image_topic': LaunchConfiguration('image_topic'),
                              'source': LaunchConfiguration('source'),
                              'mode': LaunchConfiguration('mode'),
                              'strategy': LaunchConfiguration('strategy'),
                              'input_transport': LaunchConfiguration('input_transport'),
                              'keep_recorded_stamps': LaunchConfiguration('keep_recorded_stamps'),
                              'publish_clock': LaunchConfiguration('publish_clock')}.items()),
    ])

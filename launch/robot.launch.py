"""Robot side of cbo_ros: NPU classifier, network monitor, offload planner, optional camera.

    ros2 launch cbo_ros robot.launch.py image_topic:=/camera/image_raw      # your camera driver
    ros2 launch cbo_ros robot.launch.py use_camera:=true source:=/dev/video0 namespace:=robot1

The classifier and the planner read ``image_topic`` (a remap of their relative ``image_raw``;
default ``image_raw``), published by your own camera driver: ``camera_node`` is started only with
``use_camera:=true`` (then it publishes on ``image_topic`` too). The demo video is for
demo.launch.py. ``input_transport:=compressed`` makes the readers take
sensor_msgs/CompressedImage on ``<image_topic>/compressed`` (image_transport's convention). Replay
of a rosbag2 with its recorded stamps: ``use_camera:=true source:=run1 mode:=once
keep_recorded_stamps:=true publish_clock:=true use_sim_time:=true``. ``strategy`` sets the
planner's strategy; ``strategy:=early_exit_partition`` (or ``early_exit_partition_uncalibrated``)
starts ``early_exit_node`` (``early_exit_params_file``, then ``params_file``) in place of the
classifier and the planner (docs/early_exit.md).

All nodes read ``params_file`` (default: cbo_ros/config/robot.yaml, sections keyed ``/**/<node>``
so they apply under any namespace); the camera arguments (``source``, ``mode``,
``wait_for_subscribers``, ``keep_recorded_stamps``, ``publish_clock``, ``publish_compressed``)
and ``input_transport`` override the file's values only when given.

The Fast DDS profile (32 MiB shared-memory segments: the default 512 KB is smaller than one
640x480 frame) is set through the environment: ``FASTDDS_DEFAULT_PROFILES_FILE`` keeps its value
when already set, else becomes the installed config/fastdds_profile.xml (argument
``fastdds_profile``); ``RMW_FASTRTPS_PUBLICATION_MODE`` becomes ``AUTO`` unless set (a profile with
a flow controller, like config/fastdds_shaped_link.xml, needs asynchronous publication).
With ``security:=true`` (SROS2, on a ROS 2 install with DDS-Security) every node runs in its
enclave ``<enclave_root>/<node>`` of ``keystore`` with ``ROS_SECURITY_STRATEGY=Enforce``:
docs/security.md has the keystore steps. ``robot_bringup`` starts the same nodes from the same
file with the same options (``--image-topic``, ``--no-camera``, ``--enclave-root``) where
``ros2 launch`` is not installed.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

# Strategies served by early_exit_node (cbo_ros.core.early_exit.EARLY_EXIT_STRATEGIES; a test
# keeps the two equal).
EARLY_EXIT_STRATEGIES = ('early_exit_partition', 'early_exit_partition_uncalibrated')


def generate_launch_description():
    namespace = LaunchConfiguration('namespace')
    params_file = LaunchConfiguration('params_file')
    use_sim_time = LaunchConfiguration('use_sim_time')
    log_level = LaunchConfiguration('log_level')
    frames = [('image_raw', LaunchConfiguration('image_topic'))]
    common = {'use_sim_time': use_sim_time}

    def robot_node(executable, extra=None, remappings=(), files=None):
        return Node(package='cbo_ros', executable=executable, name=executable,
                    namespace=namespace, output='screen',
                    parameters=(files or [params_file]) + [common] + ([extra] if extra else []),
                    remappings=list(remappings),
                    ros_arguments=['--log-level', log_level,
                                   '--enclave', [LaunchConfiguration('enclave_root'), '/',
                                                 executable]])

    def given_overrides(context, given):
        # Only the arguments that were given override the parameter file.
        return {name: ParameterValue(value, value_type=value_type)
                for name, (value, value_type) in given.items() if value.perform(context)}

    def camera_node(context):
        # A launch argument is parsed as YAML: `source:=0` (a V4L2 index) must stay a string.
        given = {'source': (LaunchConfiguration('source'), str),
                 'mode': (LaunchConfiguration('mode'), str),
                 'wait_for_subscribers': (LaunchConfiguration('wait_for_subscribers'), int),
                 'keep_recorded_stamps': (LaunchConfiguration('keep_recorded_stamps'), bool),
                 'publish_clock': (LaunchConfiguration('publish_clock'), bool),
                 'publish_compressed': (LaunchConfiguration('publish_compressed'), bool)}
        overrides = given_overrides(context, given)
        if LaunchConfiguration('input_transport').perform(context) == 'compressed':
            overrides['publish_compressed'] = True       # what the frame readers then take
        if (LaunchConfiguration('strategy').perform(context) in EARLY_EXIT_STRATEGIES
                and 'wait_for_subscribers' not in overrides):
            overrides['wait_for_subscribers'] = 1        # early_exit_node is the one reader
        return [robot_node('camera_node', overrides, remappings=frames)]

    def frame_readers(context):
        strategy = LaunchConfiguration('strategy').perform(context)
        if strategy in EARLY_EXIT_STRATEGIES:
            return [robot_node('early_exit_node', {'strategy': strategy}, remappings=frames,
                               files=[LaunchConfiguration('early_exit_params_file'),
                                      params_file])]
        given = {'input_transport': (LaunchConfiguration('input_transport'), str)}
        overrides = given_overrides(context, given)
        planner = {**overrides, **({'strategy': strategy} if strategy else {})}
        return [robot_node('npu_classifier_node', overrides, remappings=frames),
                robot_node('offload_planner_node', planner, remappings=frames)]

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
        DeclareLaunchArgument('use_camera', default_value='false',
                              description='Start camera_node (false: frames come from your own '
                                          'camera driver on image_topic)'),
        DeclareLaunchArgument('image_topic', default_value='image_raw',
                              description='Frames topic the classifier and the planner read '
                                          '(remap of image_raw; relative names are namespaced)'),
        DeclareLaunchArgument(
            'fastdds_profile',
            default_value=EnvironmentVariable(
                'FASTDDS_DEFAULT_PROFILES_FILE',
                default_value=PathJoinSubstitution([FindPackageShare('cbo_ros'), 'config',
                                                    'fastdds_profile.xml'])),
            description='Fast DDS XML profile (default: $FASTDDS_DEFAULT_PROFILES_FILE if set, '
                        'else the installed config/fastdds_profile.xml)'),
        DeclareLaunchArgument('source', default_value='',
                              description='use_camera: video, device, image folder, rosbag2 '
                                          "(empty: params_file's)"),
        DeclareLaunchArgument('mode', default_value='',
                              description="use_camera: loop|once (empty: params_file's)"),
        DeclareLaunchArgument(
            'wait_for_subscribers', default_value='',
            description='use_camera: the camera waits for this many image_raw readers (0: '
                        "publish at once; empty: params_file's)"),
        DeclareLaunchArgument(
            'keep_recorded_stamps', default_value='',
            description='use_camera with a rosbag2: keep its recorded stamps and frame ids '
                        "(with mode:=once; empty: params_file's)"),
        DeclareLaunchArgument(
            'publish_clock', default_value='',
            description='use_camera: publish /clock from the recorded time (with '
                        "use_sim_time:=true; empty: params_file's)"),
        DeclareLaunchArgument(
            'publish_compressed', default_value='',
            description="use_camera: also publish image_raw/compressed (empty: params_file's)"),
        DeclareLaunchArgument(
            'input_transport', default_value='',
            description='Frames the classifier and the planner read: raw (image_topic) or '
                        "compressed (image_topic/compressed); empty: params_file's"),
        DeclareLaunchArgument(
            'strategy', default_value='',
            description="Planner strategy (empty: params_file's); early_exit_partition or "
                        'early_exit_partition_uncalibrated start early_exit_node instead of '
                        'the classifier and the planner'),
        DeclareLaunchArgument(
            'early_exit_params_file',
            default_value=PathJoinSubstitution([FindPackageShare('cbo_ros'), 'config',
                                                'early_exit.yaml']),
            description='Parameter file of early_exit_node (read before params_file)'),
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
        OpaqueFunction(function=camera_node, condition=IfCondition(LaunchConfiguration(
            'use_camera'))),
        OpaqueFunction(function=frame_readers),
        robot_node('network_monitor_node'),
    ])

"""robot_bringup's real-robot options: --image-topic remaps, the Fast DDS profile environment."""

from pathlib import Path

from cbo_ros.nodes import bringup

ROOT = Path(__file__).resolve().parents[1]


def test_image_topic_remaps_the_frame_readers_only():
    options, unknown = bringup.parse_args(['--no-camera', '--image-topic', '/my_cam/image'])
    assert not unknown and options.no_camera and options.image_topic == '/my_cam/image'
    commands = {name: bringup.node_command(name, ['p.yaml'], 'robot1', [], None,
                                           options.image_topic)
                for name, _, _ in bringup.NODES}
    for name in ('camera_node', 'npu_classifier_node', 'offload_planner_node'):
        assert commands[name][-4:] == ['-r', 'image_raw:=/my_cam/image', '-r', '__ns:=/robot1']
    assert 'image_raw:=/my_cam/image' not in commands['network_monitor_node']
    plain = bringup.node_command('npu_classifier_node', ['p.yaml'], '', [], None)
    assert not any(a.startswith('image_raw:=') for a in plain)
    assert [n for n, _ in bringup.selected_nodes(options)] == [
        'npu_classifier_node', 'network_monitor_node', 'offload_planner_node']


def test_fastdds_profile_defaults_to_the_shipped_one_unless_set():
    environ = {}
    profile = bringup.set_dds_environment(environ=environ)
    assert Path(profile) == ROOT / 'config' / 'fastdds_profile.xml' and Path(profile).is_file()
    assert environ['RMW_FASTRTPS_PUBLICATION_MODE'] == 'AUTO'
    environ = {'FASTDDS_DEFAULT_PROFILES_FILE': '/etc/mine.xml',
               'RMW_FASTRTPS_PUBLICATION_MODE': 'SYNCHRONOUS'}
    assert bringup.set_dds_environment(environ=environ) == '/etc/mine.xml'
    assert environ['RMW_FASTRTPS_PUBLICATION_MODE'] == 'SYNCHRONOUS'
    assert bringup.set_dds_environment('/x/shaped.xml', environ=environ) == '/x/shaped.xml'


def test_missing_fastdds_profile_is_refused(capsys):
    assert bringup.main(['--fastdds-profile', '/nonexistent/profile.xml']) == 2
    assert 'Fast DDS profile not found' in capsys.readouterr().err


def test_replay_and_transport_options_become_node_parameters():
    options, _ = bringup.parse_args(['--video', 'run1', '--keep-recorded-stamps',
                                     '--publish-clock', '--use-sim-time',
                                     '--input-transport', 'compressed'])
    overrides = bringup.node_overrides(options)
    assert overrides['camera_node'] == {
        'source': 'run1', 'mode': 'once', 'keep_recorded_stamps': True, 'publish_clock': True,
        'publish_compressed': True, 'use_sim_time': True}
    for name in ('npu_classifier_node', 'offload_planner_node'):
        assert overrides[name] == {'input_transport': 'compressed', 'use_sim_time': True}
    assert overrides['network_monitor_node'] == {'use_sim_time': True}
    plain, _ = bringup.parse_args([])
    assert not any(bringup.node_overrides(plain).values())


def test_early_exit_strategy_runs_early_exit_node_instead_of_classifier_and_planner():
    options, _ = bringup.parse_args(['--strategy', 'early_exit_partition', '--deadline-ms',
                                     '250'])
    assert [n for n, _ in bringup.selected_nodes(options)] == [
        'camera_node', 'network_monitor_node', 'early_exit_node']
    overrides = bringup.node_overrides(options)
    assert overrides['early_exit_node'] == {'strategy': 'early_exit_partition',
                                            'deadline_ms': 250.0}
    assert overrides['camera_node'] == {'wait_for_subscribers': 1}
    command = bringup.node_command('early_exit_node', ['p.yaml'], '', [], None, '/cam/image')
    assert command[-2:] == ['-r', 'image_raw:=/cam/image']

from glob import glob

from setuptools import find_packages, setup

package_name = 'cbo_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=['cbo_ros', 'cbo_ros.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='cbo_ros maintainers',
    maintainer_email='maintainers@cbo-ros.dev',
    description='Confidence-based offloading of video analytics from a robot to a workstation.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'camera_node = cbo_ros.nodes.camera_node:main',
            'npu_classifier_node = cbo_ros.nodes.npu_classifier_node:main',
            'network_monitor_node = cbo_ros.nodes.network_monitor_node:main',
            'offload_planner_node = cbo_ros.nodes.offload_planner_node:main',
            'early_exit_node = cbo_ros.nodes.early_exit_node:main',
            'robot_bringup = cbo_ros.nodes.bringup:main',
            'cbo_demo = cbo_ros.testbed.demo:main',
            'cbo_calibrate = cbo_ros.tools.calibrate:main',
            'cbo_eval = cbo_ros.tools.evaluate:main',
            'cbo_premodel = cbo_ros.tools.premodel:main',
            'cbo_benchmark = cbo_ros.tools.benchmark:main',
            'cbo_prepare_assets = cbo_ros.assets.prepare:main',
            'cbo_link = cbo_ros.testbed.link_shaping:main',
            'cbo_record = cbo_ros.tools.record:main',
            'cbo_param = cbo_ros.tools.param:main',
            'bag_recorder_node = cbo_ros.nodes.bag_recorder_node:main',
        ],
    },
)

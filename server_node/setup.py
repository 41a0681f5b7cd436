from setuptools import find_packages, setup

package_name = 'server_node'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=['server_node', 'server_node.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='cbo_ros maintainers',
    maintainer_email='maintainers@cbo-ros.dev',
    description='Workstation offload server of cbo_ros.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'server_node = server_node.offload_server:main',
        ],
    },
)

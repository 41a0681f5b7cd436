from setuptools import find_packages, setup

package_name = 'cbo_common'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(include=['cbo_common', 'cbo_common.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='cbo_ros maintainers',
    maintainer_email='maintainers@cbo-ros.dev',
    description='Helpers shared by cbo_ros (robot) and server_node (workstation).',
    license='Apache-2.0',
)

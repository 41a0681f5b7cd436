"""cbo_ros: confidence-based offloading of video analytics from a robot to a workstation."""

__version__ = '0.1.0'

"""Workstation side of cbo_ros: the offload server."""

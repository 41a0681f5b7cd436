"""Helpers shared by the robot package (cbo_ros) and the workstation package (server_node)."""

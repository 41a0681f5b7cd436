"""The science: planning, exact solver, calibration, network estimation (numpy only, no ROS)."""

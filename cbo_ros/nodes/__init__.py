"""rclpy nodes of cbo_ros (thin wrappers around the ROS-free core)."""

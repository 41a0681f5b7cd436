"""Command-line tools of cbo_ros (cbo_calibrate, cbo_eval, ...)."""

"""How cbo_ros is tested, not what users deploy: link shaping, delay relay, demo, recorder."""

"""The planner's diagnostic level and summary (no ROS graph)."""

from cbo_ros.nodes.planner_status import ERROR, OK, PlannerHealth, WARN


def test_healthy_planner_is_ok():
    assert PlannerHealth(server_reachable=True).level_and_message() == (OK, 'ok')


def test_unreachable_server_and_uncalibrated_fallback_warn_and_are_named():
    level, message = PlannerHealth(False, 'server unreachable (probe timed out)',
                                   calibrated=False).level_and_message()
    assert level == WARN
    assert message.startswith('server unreachable (probe timed out)')
    assert 'uncalibrated fallback in use' in message


def test_recent_deadline_misses_warn_old_ones_are_only_named():
    recent = PlannerHealth(True, deadline_misses=16, misses_recent=True).level_and_message()
    old = PlannerHealth(True, deadline_misses=16, misses_recent=False).level_and_message()
    assert recent == (WARN, 'ok; 16 deadline misses')
    assert old == (OK, 'ok; 16 deadline misses')


def test_recent_transport_drops_warn():
    assert PlannerHealth(True, frames_dropped=3, drops_recent=True).level_and_message()[0] == WARN
    level, message = PlannerHealth(True, frames_dropped=3).level_and_message()
    assert level == OK and '3 frames dropped before the planner saw them' in message


def test_untrusted_estimates_warn_and_input_or_clock_problems_are_errors_first_in_line():
    assert PlannerHealth(True, untrusted_report='2 ignored').level_and_message() == \
        (WARN, 'ok; 2 ignored')
    level, message = PlannerHealth(True, clock_problem='no /clock').level_and_message()
    assert (level, message) == (ERROR, 'no /clock; ok')
    level, message = PlannerHealth(False, 'unreachable', input_problem='no publisher',
                                   untrusted_report='1 ignored').level_and_message()
    assert level == ERROR and message.startswith('no publisher; unreachable')
    assert PlannerHealth(True, input_note='compressed input').level_and_message() == \
        (OK, 'ok; compressed input')

"""The planner's health for /diagnostics: one level and one summary line (no ROS imports).

Levels follow diagnostic_msgs/DiagnosticStatus (OK 0, WARN 1, ERROR 2) and say what an operator
must act on: ERROR when frames cannot be planned at all (no input, no /clock), WARN while the
planner works degraded (server unreachable, uncalibrated fallback, untrusted link
estimates, deadline misses or transport drops in the last 10 s), OK otherwise.
Older misses and drops are still named in the message but no longer raise the level.
"""

from dataclasses import dataclass

OK, WARN, ERROR = 0, 1, 2


@dataclass(frozen=True)
class PlannerHealth:
    """What the planner's level and summary are made of."""

    server_reachable: bool
    unreachable_why: str = ''
    deadline_misses: int = 0
    misses_recent: bool = False
    calibrated: bool = True
    clock_problem: str = ''
    frames_dropped: int = 0
    drops_recent: bool = False
    untrusted_report: str = ''
    input_problem: str = ''
    input_note: str = ''

    def level_and_message(self) -> tuple:
        """Return ``(level, message)``: the worst condition's level, every condition named."""
        level = OK if self.server_reachable else WARN
        message = 'ok' if self.server_reachable else self.unreachable_why
        if self.deadline_misses:
            message += f'; {self.deadline_misses} deadline misses'
            if self.misses_recent:
                level = max(level, WARN)
        if not self.calibrated:
            level, message = WARN, message + '; uncalibrated fallback in use'
        if self.clock_problem:
            level, message = ERROR, f'{self.clock_problem}; {message}'
        if self.frames_dropped:
            message += f'; {self.frames_dropped} frames dropped before the planner saw them'
            if self.drops_recent:
                level = max(level, WARN)
        if self.untrusted_report:
            level, message = max(level, WARN), f'{message}; {self.untrusted_report}'
        if self.input_problem:
            level, message = ERROR, f'{self.input_problem}; {message}'
        elif self.input_note:
            message = f'{message}; {self.input_note}'
        return level, message

"""Units of the reliability fixes: busy hints, sequence gaps, late frames, big frames, pacing."""

import cv2
import numpy as np
import pytest

from cbo_ros.core.server_busy import BusyBackoff, retry_after_s


def test_retry_hint_is_read_from_a_busy_refusal():
    assert retry_after_s('busy: 12 requests in progress (max_queue_size 8); retry in 40 ms') \
        == 0.04
    assert retry_after_s('busy: queue full') == 0.0
    assert retry_after_s('deadline already passed') is None


def test_busy_backoff_holds_offloads_until_the_hint_and_bounds_it():
    backoff = BusyBackoff(max_wait_s=1.0)
    assert not backoff.observe('invalid image: not a JPEG', 10.0)
    assert backoff.why(10.0) == ''
    assert backoff.observe('busy: this client has 4 requests; retry in 250 ms', 10.0)
    assert backoff.why(10.1).startswith('server busy')
    assert backoff.why(10.25) == ''
    backoff.observe('busy: x; retry in 600000 ms', 20.0)          # bounded by max_wait_s
    assert backoff.why(20.9) and backoff.why(21.0) == ''
    assert backoff.refusals == 2


def test_sequence_gaps_count_frames_a_writer_sent_and_the_reader_missed():
    from cbo_ros.nodes.ros_common import SequenceGaps
    gaps = SequenceGaps()
    a, b = {'data': b'a' * 16}, {'data': b'b' * 16}
    for number in (1, 2, 5, 6):
        gaps.observe({'publication_sequence_number': number, 'publisher_gid': a})
    gaps.observe({'publication_sequence_number': 1, 'publisher_gid': b})   # a new writer
    gaps.observe({'publication_sequence_number': 3, 'publisher_gid': b})
    gaps.observe({'publication_sequence_number': 2, 'publisher_gid': b})   # out of order
    gaps.observe({})                                                      # no info
    assert gaps.missing == 3 and gaps.received == 8


def test_frame_book_answers_late_frames_but_not_replays():
    from std_msgs.msg import Header
    from cbo_ros.nodes.planner_frames import FrameBook, final_result
    start, deadline, wait = 100 * 10**9, 300 * 10**6, 275 * 10**6
    book = FrameBook(started_ns=start)

    def header(stamp_ns):
        h = Header()
        h.stamp.sec, h.stamp.nanosec = divmod(stamp_ns, 10**9)
        return h
    now = start + 10**9
    # A result replayed from before the start (transient local): not answered again.
    replay = book.frame_for(header(50 * 10**9), deadline, now, wait, start - 1)
    assert replay == (None, 'due_before_start')
    # The same old stamp published now, and a stamp of 0: answered, late.
    state, why = book.frame_for(header(50 * 10**9), deadline, now, wait, now)
    assert why == 'late' and state.late and book.due_ns(state, 25 * 10**6) == now + wait
    zero, why = book.frame_for(header(0), deadline, now, wait, now)
    assert why == 'late'
    fresh, why = book.frame_for(header(now), deadline, now, wait, now)
    assert why == 'new' and not fresh.late
    assert book.due(now + wait - 1, 0) == []
    assert set(f.key for f in book.due(now + wait, 0)) == {state.key, zero.key}
    result = final_result(zero, 'local result missing at deadline', now + wait)
    assert result.note.startswith('deadline passed before planning') and not result.deadline_met


def test_frames_far_larger_than_needed_are_subsampled_others_unchanged():
    """Bounded per-frame cost: frames of 8x the working side or more are subsampled to 4-8x."""
    from cbo_ros.perception.image_ops import center_square, decimate_for
    rng = np.random.default_rng(0)
    vga = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (0, 0), 2.0)
    assert decimate_for(vga, 128) is vga and decimate_for(vga, 384) is vga
    hd = cv2.resize(vga, (1280, 720), interpolation=cv2.INTER_LINEAR)
    assert decimate_for(hd, 128) is hd                                      # 720p: as offline
    uhd = cv2.resize(vga, (3840, 2160), interpolation=cv2.INTER_LINEAR)
    assert decimate_for(uhd, 384) is uhd                                    # 2160 < 8 x 384
    small = decimate_for(uhd, 128)
    assert small.shape == (540, 960, 3) and small.flags['C_CONTIGUOUS']     # stride 4
    assert 4 * 128 <= min(small.shape[:2]) < 8 * 128
    huge = np.zeros((4320, 7680, 3), np.uint8)
    assert decimate_for(huge, 384).shape == (2160, 3840, 3)                 # 8K, stride 2
    # Same picture: the centre square at 128 px hardly differs from the full-size path.
    difference = np.abs(center_square(small, 128).astype(int)
                        - center_square(uhd, 128).astype(int)).mean()
    assert difference < 4.0, difference


@pytest.mark.parametrize('rate', [5e4, 1e5, 5e5, 1e6, 2e6, 5e6, 8e6, 2e7, 5e7, 1e8])
def test_flow_controller_keeps_the_link_the_bottleneck_without_bursting_far_above_it(rate):
    """The Fast DDS pacing budget, on the wire (headers included), is 100-102 % of the link."""
    from cbo_ros.testbed.link_shaping import flow_budget, WIRE_OVERHEAD
    count, period_ms = flow_budget(rate, 1400)
    wire_bps = count * (1400 + WIRE_OVERHEAD) * 8 / (period_ms / 1000.0)
    assert 1.0 <= wire_bps / rate <= 1.02, (count, period_ms, wire_bps / rate)
    assert count >= 1 and 5 <= period_ms <= 1000

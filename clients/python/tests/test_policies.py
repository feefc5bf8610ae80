"""Table tests of the client's pure policies: backoff, URL rotation, `unavailable`
retries, resume points and repeat filtering, error mapping."""
import unittest

import server  # noqa: F401 - puts the package on sys.path

from switchyard import errors
from switchyard.backoff import Backoff, after_failure
from switchyard.pending import judge
from switchyard.resume import Resume


def ev(cursor, priority="normal", event_id=None):
    return {"id": event_id or f"e{cursor}", "cursor": cursor, "priority": priority}


class BackoffTest(unittest.TestCase):
    def test_schedule(self):
        b = Backoff()
        for attempt, want in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (100, 30.0), (0, 1.0)]:
            self.assertAlmostEqual(b.delay(attempt, 0.5), want, msg=f"attempt {attempt}")
        self.assertAlmostEqual(b.delay(1, 0.0), 0.8)
        self.assertAlmostEqual(b.delay(6, 0.0), 24.0)
        self.assertAlmostEqual(b.delay(1, 7.0), 1.2)  # clamped
        none = Backoff(jitter=0.0)
        self.assertEqual(none.delay(3, 0.0), none.delay(3, 0.9))

    def test_rotation(self):
        table = [
            ((0, 1, 1), (0, 1)), ((0, 1, 7), (0, 7)),
            ((0, 2, 1), (1, None)), ((1, 2, 2), (0, 1)), ((1, 2, 4), (0, 2)),
            ((2, 3, 1), (0, None)), ((0, 3, 2), (1, None)), ((1, 3, 3), (2, 1)),
            ((0, 2, 0), (1, None)), ((0, 0, 1), (0, 1)), ((5, 2, 1), (0, None)),
        ]
        for args, want in table:
            self.assertEqual(after_failure(*args), want, args)


class PendingTest(unittest.TestCase):
    def test_unavailable_is_retried_only_where_allowed(self):
        unavailable = {"type": "error", "code": "unavailable", "message": "m", "request_id": 1}
        refused = {"type": "error", "code": "invalid_event", "message": "m", "request_id": 1}
        self.assertEqual(judge(True, None, unavailable), ("retry", None))
        self.assertEqual(judge(False, None, unavailable), ("reply", unavailable))
        self.assertEqual(judge(True, None, refused), ("reply", refused))

    def test_batch_keeps_first_answers(self):
        stored = lambda c, d: {"event_id": f"e{c}", "cursor": c, "duplicate": d}  # noqa: E731
        item = lambda code: {"error": {"code": code, "message": "m"}}  # noqa: E731
        first = [stored(7, False), item("unavailable"), item("invalid_event")]
        verdict, earlier = judge(True, None, {"type": "published_batch", "results": first})
        self.assertEqual((verdict, earlier), ("retry", first))
        second = [stored(7, True), stored(8, False), item("invalid_event")]
        verdict, reply = judge(True, earlier, {"type": "published_batch", "results": second})
        self.assertEqual(verdict, "reply")
        self.assertEqual(reply["results"], [stored(7, False), stored(8, False), item("invalid_event")])


class ResumeTest(unittest.TestCase):
    def test_protocol_example_resumes_below_the_waiting_low_event(self):
        # docs/protocol.md 5.3: 41 low and 42 critical published together; 42 arrives,
        # the connection drops before 41 is written. Resuming after 42 would skip 41.
        r = Resume(40, replaying=True)
        r.replay_complete()
        self.assertTrue(r.accept(ev(42, "critical"), 1))
        self.assertEqual(r.resume_point(), 40)
        r.resumed(40)
        # The resume replays 41 and 42: 41 is new, 42 a repeat.
        self.assertTrue(r.accept(ev(41, "low"), 1))
        self.assertFalse(r.accept(ev(42, "critical"), 1))

    def test_marks_advance_with_live_events_of_every_priority(self):
        r = Resume(10, replaying=True)
        self.assertTrue(r.accept(ev(11, "low"), 1))  # replayed: no mark
        self.assertEqual(r.marks, {})
        r.replay_complete()
        for cursor, prio in [(20, "critical"), (21, "high"), (15, "normal"), (12, "low")]:
            self.assertTrue(r.accept(ev(cursor, prio), 1))
        self.assertEqual(r.resume_point(), 12)
        r.resumed(12)
        # Repeats at or below a priority's mark, or already seen, are dropped.
        self.assertFalse(r.accept(ev(15, "normal"), 1))
        self.assertFalse(r.accept(ev(20, "critical"), 1))
        self.assertFalse(r.accept(ev(13, "normal"), 1))  # at or below the normal mark 15
        self.assertTrue(r.accept(ev(22, "low"), 1))
        self.assertEqual(r.seen, {15, 20, 21, 22})

    def test_unknown_start_resumes_by_time_until_every_priority_has_a_mark(self):
        r = Resume(None, replaying=False)
        r.accept(ev(5, "normal"), 1)
        self.assertIsNone(r.resume_point())
        for cursor, prio in [(6, "critical"), (7, "high"), (8, "low")]:
            r.accept(ev(cursor, prio), 1)
        self.assertEqual(r.resume_point(), 5)

    def test_acks_hold_the_resume_point_and_repeats_pass(self):
        r = Resume(0, replaying=False, ack=True)
        self.assertTrue(r.accept(ev(3, "low", "a"), 1))
        self.assertTrue(r.accept(ev(9, "low", "b"), 1))
        self.assertEqual(r.resume_point(), 0)  # no critical/high/normal yet: start
        for cursor, prio in [(10, "critical"), (11, "high"), (12, "normal")]:
            r.accept(ev(cursor, prio, f"x{cursor}"), 1)
            r.settled(f"x{cursor}")
        self.assertEqual(r.resume_point(), 2)  # below unacknowledged 3
        r.settled("a")
        self.assertEqual(r.resume_point(), 8)  # below unacknowledged 9
        r.settled("b")
        self.assertEqual(r.resume_point(), 9)
        self.assertTrue(r.accept(ev(9, "low", "b"), 2))  # a redelivery is handed over

    def test_dead_letter_notices_pass(self):
        r = Resume(0, replaying=False)
        self.assertTrue(r.accept({"id": "n", "cursor": 0, "priority": "high"}, 1))
        self.assertTrue(r.accept({"id": "n", "cursor": 0, "priority": "high"}, 1))


class ErrorsTest(unittest.TestCase):
    def test_codes_map_to_classes(self):
        for code, cls in [("invalid_event", errors.InvalidEvent), ("forbidden", errors.Forbidden),
                          ("rate_limited", errors.RateLimited), ("unavailable", errors.Unavailable)]:
            e = errors.error_from({"code": code, "message": "m"}, 7)
            self.assertIs(type(e), cls)
            self.assertEqual((e.code, e.message, e.request_id), (code, "m", 7))
        e = errors.error_from({"code": "brand_new", "message": "m"})
        self.assertIs(type(e), errors.ServerError)
        self.assertEqual(e.code, "brand_new")
        limited = errors.error_from({"code": "rate_limited", "message": "...; retry in 3 ms"})
        self.assertAlmostEqual(limited.retry_after, 0.003)


if __name__ == "__main__":
    unittest.main()

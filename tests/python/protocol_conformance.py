#!/usr/bin/env python3
"""Protocol conformance checks for Switchyard, written as a client we do not write.

Sends the literal JSON frames of docs/protocol.md (wire protocol v1, the contract kept in
this repository) over WebSocket and HTTP and checks the replies are exactly what that
document promises.

Run from the repository root after `cargo build --bin switchyard`:

    python3 tests/python/protocol_conformance.py --binary target/debug/switchyard

Needs Python 3.11+ and `websockets>=12` (`pip install websockets`). The script starts
the server itself (`serve --listen 127.0.0.1:0`), parses the port from its log, runs
every check on fresh connections (each receive times out after 5 s), stops the server
with SIGTERM (expecting exit code 0), prints `PASS name` / `FAIL name: reason` per check
and finally one line `N passed, M failed`. Exit status is 1 if any check failed.

A second server is then started with tokens (docs/protocol.md section 1.3) for the
authentication checks.
"""
import argparse
import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import AsyncExitStack

import websockets

RECV_TIMEOUT = 5.0
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
ENVELOPE_FIELDS = ["id", "type", "topic", "priority", "timestamp", "source", "target",
                   "correlation_id", "agent_id", "task_id", "payload", "metadata", "ttl_ms", "cursor"]
PRIORITIES = ["critical", "high", "normal", "low"]
BASE = ""  # http://127.0.0.1:PORT, set once the server is up
WS = ""    # ws://127.0.0.1:PORT


class CheckFailed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def eq(got, want, what):
    check(got == want, f"{what}: expected {want!r}, got {got!r}")


def is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def is_rfc3339(x):
    return isinstance(x, str) and RFC3339.match(x) is not None


# ---------------------------------------------------------------- WebSocket helpers
async def connect(stack, path="/ws"):
    return await stack.enter_async_context(
        # short close_timeout: the server echoes the close frame at once but leaves the TCP
        # close to a later timer, and websockets would otherwise wait for it on every close
        websockets.connect(WS + path, open_timeout=RECV_TIMEOUT, close_timeout=0.2))


async def recv(ws):
    try:
        raw = await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)
    except asyncio.TimeoutError:
        raise CheckFailed(f"no message within {RECV_TIMEOUT:.0f} s") from None
    check(isinstance(raw, str), f"expected a text frame, got binary {raw!r}")
    try:
        msg = json.loads(raw)
    except ValueError:
        raise CheckFailed(f"server sent invalid JSON: {raw!r}") from None
    check(isinstance(msg, dict), f"expected a JSON object, got {raw!r}")
    return msg


async def command(ws, frame):
    """Send one command (dict, or a raw str/bytes frame) and return its reply."""
    await ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
    return await recv(ws)


async def expect_type(ws, frame, want_type):
    reply = await command(ws, frame)
    check(reply.get("type") == want_type, f"sent {frame!r}: expected type {want_type!r}, got {reply!r}")
    return reply


async def expect_error(ws, frame, code):
    reply = await command(ws, frame)
    check(reply.get("type") == "error" and reply.get("code") == code,
          f"sent {frame!r}: expected error {code!r}, got {reply!r}")
    check(isinstance(reply.get("message"), str), f"error without string message: {reply!r}")
    return reply


async def still_open(ws):
    reply = await command(ws, {"type": "ping"})
    check(reply.get("type") == "pong", f"ping after error: expected pong, got {reply!r}")


def check_published(reply, what="published reply"):
    eq(reply.get("type"), "published", f"{what} type")
    check(isinstance(reply.get("event_id"), str) and reply["event_id"], f"{what}: bad event_id in {reply!r}")
    check(is_int(reply.get("cursor")), f"{what}: cursor not an integer in {reply!r}")
    check(reply.get("duplicate") is False, f"{what}: expected duplicate false in {reply!r}")
    return reply


async def publish(pub, event):
    return check_published(await command(pub, {"type": "publish_event", "event": event}), f"publish {event!r}")


async def subscriber(stack, subscription, path="/ws"):
    ws = await connect(stack, path)
    reply = await expect_type(ws, {"type": "subscribe", "subscription": subscription}, "subscribed")
    sid = reply.get("subscription_id")
    check(isinstance(sid, str) and sid, f"subscribed without subscription_id: {reply!r}")
    return ws, sid


async def next_event(ws, sid=None):
    msg = await recv(ws)
    eq(msg.get("type"), "event", f"message type (message {msg!r})")
    check(isinstance(msg.get("event"), dict), f"event without envelope: {msg!r}")
    eq(msg.get("attempt"), 1, "attempt")
    if sid is not None:
        eq(msg.get("subscription_id"), sid, "delivery subscription_id")
    return msg["event"]


async def collect(ws, expected_ids, label):
    """Receive events until every id in expected_ids arrived; any other event fails."""
    pending, got = set(expected_ids), []
    while pending:
        try:
            ev = await next_event(ws)
        except CheckFailed as e:
            raise CheckFailed(f"{label}: {e} (still waiting for {len(pending)} event(s))") from None
        check(ev.get("id") in pending,
              f"{label}: unexpected event topic={ev.get('topic')!r} type={ev.get('type')!r} id={ev.get('id')}")
        pending.discard(ev["id"])
        got.append(ev)
    return got


# ---------------------------------------------------------------- HTTP helpers
def http(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=RECV_TIMEOUT) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


async def ahttp(method, path, body=None):
    return await asyncio.to_thread(http, method, path, body)


def event_list(body, what):
    """GET /api/events returns stored events; accept a bare list or an object with `events`."""
    if isinstance(body, dict) and isinstance(body.get("events"), list):
        body = body["events"]
    check(isinstance(body, list), f"{what}: expected a list of events, got {body!r}")
    return body


def topic_matches(pattern, topic):
    p, t = pattern.split("."), topic.split(".")
    for i, seg in enumerate(p):
        if seg in (">", "#") and i == len(p) - 1:
            return len(t) > i
        if i >= len(t) or (seg != "*" and seg != t[i]):
            return False
    return len(t) == len(p)


# ---------------------------------------------------------------- checks: commands
async def ping_pong():
    async with AsyncExitStack() as s:
        ws = await connect(s)
        reply = await expect_type(ws, {"type": "ping"}, "pong")
        check(is_rfc3339(reply.get("server_time")), f"server_time not RFC 3339: {reply!r}")


async def request_id_echo():
    async with AsyncExitStack() as s:
        ws = await connect(s)
        for rid in ("req-1", 42):
            eq((await expect_type(ws, {"type": "ping", "request_id": rid}, "pong")).get("request_id"), rid,
               "request_id on pong")
        reply = await expect_type(ws, {"type": "publish_event", "request_id": "p-7", "event": {"type": "rid_test"}},
                                  "published")
        eq(reply.get("request_id"), "p-7", "request_id on published")
        reply = await expect_error(ws, {"type": "explode", "request_id": 9}, "unknown_command")
        eq(reply.get("request_id"), 9, "request_id on error")


async def publish_variants():
    async with AsyncExitStack() as s:
        ws = await connect(s)
        cursors = []
        for frame in ({"type": "publish_event", "event": {"type": "variant_a"}},
                      {"type": "publish", "event": {"type": "variant_b"}},
                      {"action": "publish", "event": {"type": "variant_c"}}):
            cursors.append(check_published(await command(ws, frame), f"reply to {frame!r}")["cursor"])
        check(cursors[0] < cursors[1] < cursors[2], f"cursors not strictly increasing: {cursors}")


async def publish_duplicate():
    async with AsyncExitStack() as s:
        ws = await connect(s)
        frame = {"type": "publish_event", "event": {"id": "dup-evt-1", "type": "dup_test"}}
        first = check_published(await command(ws, frame), "first publish")
        eq(first["event_id"], "dup-evt-1", "event_id")
        second = await expect_type(ws, frame, "published")
        eq(second.get("duplicate"), True, "duplicate on second publish")
        eq(second.get("cursor"), first["cursor"], "cursor on duplicate")
        eq(second.get("event_id"), "dup-evt-1", "event_id on duplicate")


async def publish_batch_partial():
    async with AsyncExitStack() as s:
        ws = await connect(s)
        reply = await expect_type(ws, {"type": "publish_batch", "events": [
            {"type": "batch_one"}, {"payload": {"no": "type or topic"}}, {"type": "batch_three"}]},
            "published_batch")
        res = reply.get("results")
        check(isinstance(res, list) and len(res) == 3, f"expected 3 results, got {reply!r}")
        for i in (0, 2):
            check(isinstance(res[i].get("event_id"), str) and is_int(res[i].get("cursor"))
                  and res[i].get("duplicate") is False, f"result {i} not a success: {res[i]!r}")
        err = res[1].get("error")
        check(isinstance(err, dict) and err.get("code") == "invalid_event" and isinstance(err.get("message"), str),
              f"result 1: expected error invalid_event, got {res[1]!r}")
        check(res[0]["cursor"] < res[2]["cursor"], f"batch cursors out of order: {res!r}")


async def subscribe_all_envelope():
    async with AsyncExitStack() as s:
        sub, sid = await subscriber(s, {"type": "all"})
        pub = await connect(s)
        r = await publish(pub, {"type": "envelope_check"})
        ev = await next_event(sub, sid)
        missing = [f for f in ENVELOPE_FIELDS if f not in ev]
        check(not missing, f"envelope lacks fields {missing}: {ev!r}")
        for field, want in (("id", r["event_id"]), ("cursor", r["cursor"]), ("type", "envelope_check"),
                            ("topic", "envelope.check"), ("priority", "normal"), ("source", "anonymous"),
                            ("payload", {}), ("metadata", {})):
            eq(ev[field], want, f"envelope {field}")
        check(is_rfc3339(ev["timestamp"]), f"timestamp not RFC 3339: {ev['timestamp']!r}")


async def subscribe_client_id():
    async with AsyncExitStack() as s:
        sub, sid = await subscriber(s, {"type": "all", "id": "my-sub-1"})
        eq(sid, "my-sub-1", "subscription_id")
        r = await publish(await connect(s), {"type": "client_id_check"})
        eq((await next_event(sub, "my-sub-1"))["id"], r["event_id"], "delivered event id")


async def pattern_subscriptions():
    cases = {"task.*": [False, False, True], "task.>": [False, True, True], ">": [True, True, True],
             "task.#": [False, True, True]}
    async with AsyncExitStack() as s:
        subs = {p: await subscriber(s, {"type": "pattern", "patterns": [p]}) for p in cases}
        alias_ws, alias_sid = await subscriber(s, {"type": "PATTERN", "pattern": "task.*"})
        pub = await connect(s)
        ids = [(await publish(pub, {"topic": t}))["event_id"] for t in ("zzz.other", "task.created.retry",
                                                                        "task.created")]
        for p, (ws, sid) in subs.items():
            want = [i for i, m in zip(ids, cases[p]) if m]
            got = [ev["id"] for ev in await collect(ws, want, f"pattern {p!r}")]
            eq(got, want, f"ids delivered for pattern {p!r}")
        eq((await next_event(alias_ws, alias_sid))["id"], ids[2], "single `pattern` alias delivery")


async def filtered_subscriptions():
    filters = {"types": {"event_types": ["filt_a"]}, "prios": {"priorities": ["high"]},
               "minprio": {"min_priority": "high"}, "sources": {"sources": ["src-x"]},
               "agents": {"agent_ids": ["agent-7"]},
               "combined": {"event_types": ["filt_b"], "priorities": ["high", "critical"]}}
    events = [  # (event, names of the filters it matches)
        ({"type": "filt_a", "priority": "low", "source": "src-y"}, {"types"}),
        ({"type": "filt_b", "priority": "high"}, {"prios", "minprio", "combined"}),
        ({"type": "filt_b", "priority": "critical"}, {"minprio", "combined"}),
        ({"type": "filt_b", "source": "src-x"}, {"sources"}),
        ({"type": "filt_b", "agent_id": "agent-7"}, {"agents"}),
        ({"type": "filt_b", "priority": "normal", "agent_id": "agent-8"}, set()),
        ({"type": "filt_a", "priority": "high", "source": "src-x", "agent_id": "agent-7"}, set(filters) - {"combined"}),
    ]
    async with AsyncExitStack() as s:
        subs = {n: await subscriber(s, {"type": "filtered", "filter": f}) for n, f in filters.items()}
        pub = await connect(s)
        ids = [(await publish(pub, ev))["event_id"] for ev, _ in events]
        for name, (ws, _) in subs.items():
            want = [i for i, (_, names) in zip(ids, events) if name in names]
            await collect(ws, want, f"filter {filters[name]!r}")
        # the last matching event proves the non-matching ones were skipped, not late
        ws, sid = subs["combined"]
        eid = (await publish(pub, {"type": "filt_b", "priority": "high"}))["event_id"]
        eq((await next_event(ws, sid))["id"], eid, "combined filter: next delivery")


async def conditional_subscriptions():
    # The example condition of docs/protocol.md (section 4.1), then `event.type` and a bad
    # expression.
    cond = 'priority == "critical" || (topic.startsWith("cost.") && payload.total_cost > 5.0)'
    async with AsyncExitStack() as s:
        ws, sid = await subscriber(s, {"type": "conditional", "condition": cond})
        typed, typed_sid = await subscriber(s, {"type": "CONDITIONAL", "condition": 'event.type == "cond_b"',
                                                "patterns": ["cond.*"]})
        pub = await connect(s)
        events = [{"topic": "cost.update", "payload": {"total_cost": 7.5}},  # match
                  {"topic": "cost.update", "payload": {"total_cost": 1.0}},  # no
                  {"topic": "cost.update", "payload": {}},                   # missing field: no
                  {"type": "cond_b", "priority": "critical"}]                # match both
        ids = [(await publish(pub, ev))["event_id"] for ev in events]
        await collect(ws, [ids[0], ids[3]], "conditional (docs/protocol.md example)")
        eq((await next_event(typed, typed_sid))["id"], ids[3], "condition on event.type")
        await expect_error(ws, {"type": "subscribe", "subscription": {"type": "conditional",
                                                                      "condition": "priority =="}},
                           "invalid_condition")
        await still_open(ws)


async def coalesced_subscription():
    async with AsyncExitStack() as s:
        ws, sid = await subscriber(s, {"type": "pattern", "patterns": ["coal.>"],
                                       "coalesce": {"key": "payload.task_id", "window_ms": 2000}})
        pub = await connect(s)
        for n in range(20):
            await publish(pub, {"topic": "coal.progress", "payload": {"task_id": "t1", "n": n}})
        got = []
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), 3.0)
            except asyncio.TimeoutError:
                break
            got.append(json.loads(raw)["event"]["payload"]["n"])
        check(1 <= len(got) <= 2, f"expected one or two deliveries of 20 rapid updates, got {got}")
        eq(got[-1], 19, "last delivery is the latest update")


async def topic_derivation():
    cases = [  # (published event, expected envelope fields)
        ({"type": "task_created", "payload": {"agent_id": "ag-1", "task_id": "tk-1"}},
         {"topic": "task.created", "agent_id": "ag-1", "task_id": "tk-1"}),
        ({"type": "cost_budget_warning"}, {"topic": "cost.budget_warning", "type": "cost_budget_warning"}),
        ({"type": "custom_event", "priority": "CRITICAL"}, {"topic": "custom.event", "priority": "critical"}),
        ({"topic": "agent.failed"}, {"type": "agent_failed", "topic": "agent.failed"}),
        ({"type": "explicit_ids", "agent_id": "explicit", "payload": {"agent_id": "inner", "task_id": 5}},
         {"agent_id": "explicit", "task_id": None}),
    ]
    async with AsyncExitStack() as s:
        sub, _ = await subscriber(s, {"type": "pattern", "patterns": [">"]})
        pub = await connect(s)
        ids = [(await publish(pub, ev))["event_id"] for ev, _ in cases]
        got = {ev["id"]: ev for ev in await collect(sub, ids, "topic derivation")}
        for eid, (sent, want) in zip(ids, cases):
            for field, value in want.items():
                eq(got[eid].get(field), value, f"{field} of event published as {sent!r}")


async def action_subscribe_alias():
    async with AsyncExitStack() as s:
        sub = await connect(s)
        sid = (await expect_type(sub, {"action": "subscribe", "topics": ["task.*"]}, "subscribed")).get("subscription_id")
        check(isinstance(sid, str) and sid, "subscribed without subscription_id")
        pub = await connect(s)
        await publish(pub, {"topic": "task.created.retry"})
        eid = (await publish(pub, {"topic": "task.created"}))["event_id"]
        eq((await next_event(sub, sid))["id"], eid, "first delivery (task.created.retry must not match)")


async def connect_time_subscription(query, sent, want_index):
    async with AsyncExitStack() as s:
        sub = await connect(s, "/ws?" + query)
        first = await recv(sub)
        check(first.get("type") == "subscribed" and isinstance(first.get("subscription_id"), str),
              f"first message: expected subscribed, got {first!r}")
        pub = await connect(s)
        ids = [(await publish(pub, ev))["event_id"] for ev in sent]
        for i in want_index:
            eq((await next_event(sub, first["subscription_id"]))["id"], ids[i], f"delivery of {sent[i]!r}")


async def connect_topics():
    await connect_time_subscription("topics=task.*,agent.%3E",
                                    [{"topic": "other.x"}, {"topic": "task.a.b"}, {"topic": "agent.x.y"},
                                     {"topic": "task.done"}], [2, 3])


async def connect_kinds():
    await connect_time_subscription("kinds=task.*", [{"topic": "task.a.b"}, {"topic": "task.a"}], [1])


async def connect_agent_id():
    await connect_time_subscription("topics=task.*&agent_id=ag-9",
                                    [{"topic": "task.created", "agent_id": "ag-1"},
                                     {"topic": "task.created", "agent_id": "ag-9"}], [1])


async def bare_root_upgrade():
    async with AsyncExitStack() as s:
        ws = await connect(s, "")
        await expect_type(ws, {"type": "ping"}, "pong")


async def unsubscribe():
    async with AsyncExitStack() as s:
        sub, sid = await subscriber(s, {"type": "pattern", "patterns": ["unsub.*"], "id": "gone"})
        reply = await expect_type(sub, {"type": "unsubscribe", "subscription_id": "gone"}, "unsubscribed")
        eq(reply.get("subscription_id"), "gone", "unsubscribed subscription_id")
        await expect_error(sub, {"type": "unsubscribe", "subscription_id": "never-was"}, "unknown_subscription")
        await expect_type(sub, {"type": "subscribe", "subscription": {"type": "pattern", "patterns": ["probe.*"],
                                                                       "id": "probe"}}, "subscribed")
        pub = await connect(s)
        await publish(pub, {"topic": "unsub.a"})
        eid = (await publish(pub, {"topic": "probe.b"}))["event_id"]
        eq((await next_event(sub, "probe"))["id"], eid, "next delivery after unsubscribe")


async def priority_order():
    async with AsyncExitStack() as s:
        sub, sid = await subscriber(s, {"type": "pattern", "patterns": ["prio.*"]})
        pub = await connect(s)
        prios = ["low", "low", "normal", "critical", "high"]
        reply = await expect_type(pub, {"type": "publish_batch", "events": [
            {"topic": "prio.test", "priority": p, "payload": {"seq": i}} for i, p in enumerate(prios)]},
            "published_batch")
        check(all("event_id" in r for r in reply.get("results", [])), f"batch not accepted: {reply!r}")
        got = [(ev["priority"], ev["payload"].get("seq")) for ev in [await next_event(sub, sid) for _ in prios]]
        eq(got, [("critical", 3), ("high", 4), ("normal", 2), ("low", 0), ("low", 1)], "delivery order")


def error_check(frame, code):
    async def run():
        async with AsyncExitStack() as s:
            ws = await connect(s)
            await expect_error(ws, frame, code)
            await still_open(ws)
    return run


# ---------------------------------------------------------------- checks: HTTP
async def http_health_ready():
    for path in ("/health", "/ready"):
        status, body = await ahttp("GET", path)
        eq(status, 200, f"GET {path} status (body {body!r})")


async def http_post_single():
    status, body = await ahttp("POST", "/api/events", {"type": "http_single"})
    eq(status, 201, f"status (body {body!r})")
    check(isinstance(body, dict) and body.get("type") == "published_batch", f"body: {body!r}")
    res = body.get("results")
    check(isinstance(res, list) and len(res) == 1 and isinstance(res[0].get("event_id"), str)
          and is_int(res[0].get("cursor")) and res[0].get("duplicate") is False, f"results: {res!r}")


async def http_post_array():
    status, body = await ahttp("POST", "/api/events", [{"type": "http_a"}, {"priority": "high"}, {"type": "http_b"}])
    eq(status, 201, f"status (body {body!r})")
    check(isinstance(body, dict) and body.get("type") == "published_batch", f"body: {body!r}")
    res = body.get("results")
    check(isinstance(res, list) and len(res) == 3, f"expected 3 results: {body!r}")
    check(res[0].get("cursor") is not None and res[2].get("cursor") is not None and res[0]["cursor"] < res[2]["cursor"],
          f"results 0 and 2 should succeed in order: {res!r}")
    eq(res[1].get("error", {}).get("code"), "invalid_event", f"result 1 error code ({res[1]!r})")


async def http_events_query():
    _, body = await ahttp("POST", "/api/events", [{"topic": f"task.hq{i}"} for i in range(3)])
    cursors = [r["cursor"] for r in body["results"]]
    status, body = await ahttp("GET", "/api/events?topic=task.*&limit=2&order=desc")
    eq(status, 200, f"status (body {body!r})")
    evs = event_list(body, "topic=task.*&limit=2&order=desc")
    eq([e.get("cursor") for e in evs], cursors[:0:-1], "cursors (newest first, at most 2)")
    check(all(topic_matches("task.*", e.get("topic", "")) for e in evs), f"non-matching topic in {evs!r}")


async def http_events_filters():
    _, body = await ahttp("POST", "/api/events", [{"type": "hq_kind", "priority": "high"}, {"type": "hq_other"},
                                                  {"type": "hq_kind", "priority": "low"}])
    c = [r["cursor"] for r in body["results"]]
    _, body = await ahttp("GET", f"/api/events?after={c[0]}")
    evs = event_list(body, "after")
    eq([e.get("cursor") for e in evs], c[1:], f"cursors after {c[0]} (ascending)")
    _, body = await ahttp("GET", "/api/events?type=hq_kind")
    eq([e.get("cursor") for e in event_list(body, "type")], [c[0], c[2]], "cursors for type=hq_kind")
    _, body = await ahttp("GET", "/api/events?priority=high")
    evs = event_list(body, "priority")
    check(all(e.get("priority") == "high" for e in evs) and c[0] in [e.get("cursor") for e in evs],
          f"priority=high returned {[(e.get('cursor'), e.get('priority')) for e in evs]}")


async def http_topics():
    _, body = await ahttp("POST", "/api/events", [{"topic": "topics.check"}, {"topic": "topics.check"}])
    last = body["results"][1]["cursor"]
    status, body = await ahttp("GET", "/api/topics")
    eq(status, 200, "status")
    check(isinstance(body, list), f"expected a list: {body!r}")
    for t in body:
        check(isinstance(t.get("topic"), str) and is_int(t.get("count")) and is_int(t.get("last_cursor"))
              and is_rfc3339(t.get("last_at")), f"bad topic entry {t!r}")
    mine = [t for t in body if t["topic"] == "topics.check"]
    check(len(mine) == 1 and mine[0]["count"] == 2 and mine[0]["last_cursor"] == last,
          f"expected topics.check count 2 last_cursor {last}, got {mine!r}")


def find_per_priority(obj, key_test):
    """Find dicts under a key satisfying key_test whose value has an integer per priority."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if key_test(k) and isinstance(v, dict) and all(is_int(v.get(p)) for p in PRIORITIES):
                found.append(v)
            found += find_per_priority(v, key_test)
    return found


async def http_stats():
    status, body = await ahttp("GET", "/api/stats")
    eq(status, 200, "status")
    for label, test in (("published", lambda k: k == "published"), ("delivered", lambda k: k == "delivered"),
                        ("queue depths", lambda k: "queue" in k)):
        check(find_per_priority(body, test), f"no {label} per priority in {body!r}")


async def http_aliases():
    for alias in ("/stats", "/topics", "/events"):
        status, body = await ahttp("GET", alias)
        eq(status, 200, f"GET {alias} status")
        _, canonical = await ahttp("GET", "/api" + alias)
        eq(type(body).__name__, type(canonical).__name__, f"GET {alias} body kind vs /api{alias}")
    _, body = await ahttp("GET", "/topics")
    check(isinstance(body, list), f"/topics should be a list: {body!r}")
    event_list((await ahttp("GET", "/events?limit=1"))[1], "/events")


async def http_subscriptions():
    async with AsyncExitStack() as s:
        await subscriber(s, {"type": "pattern", "patterns": ["listed.*"], "id": "listed-sub-xyz"})
        status, body = await ahttp("GET", "/api/subscriptions")
        eq(status, 200, "status")
        check("listed-sub-xyz" in json.dumps(body), f"subscription listed-sub-xyz not in {body!r}")


async def http_bad_param():
    status, body = await ahttp("GET", "/api/events?limit=abc")
    eq(status, 400, f"status (body {body!r})")
    err = body.get("error") if isinstance(body, dict) else None
    check(isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("message"), str),
          f"expected {{\"error\":{{\"code\",\"message\"}}}}, got {body!r}")


# ---------------------------------------------------------------- checks: replay, acks, dead letters
def uniq(prefix):
    return f"{prefix}{time.monotonic_ns()}"


async def replay_from_cursor():
    topic = uniq("replay.t")
    async with AsyncExitStack() as s:
        pub = await connect(s)
        first = await publish(pub, {"topic": topic, "payload": {"n": 0}})
        second = await publish(pub, {"topic": topic, "payload": {"n": 1}})
        ws = await connect(s)
        sub = await expect_type(ws, {"type": "subscribe", "subscription": {
            "type": "pattern", "patterns": [topic], "from_cursor": first["cursor"] - 1}}, "subscribed")
        sid = sub["subscription_id"]
        got = [await next_event(ws, sid), await next_event(ws, sid)]
        eq([e["cursor"] for e in got], [first["cursor"], second["cursor"]], "replayed cursors")
        done = await recv(ws)
        eq(done.get("type"), "replay_complete", "after the replay")
        eq(done.get("subscription_id"), sid, "replay_complete subscription_id")
        check(is_int(done.get("last_cursor")) and done["last_cursor"] >= second["cursor"],
              f"replay_complete last_cursor: {done!r}")
        live = await publish(pub, {"topic": topic})
        eq((await next_event(ws, sid))["id"], live["event_id"], "live after replay")


async def ack_redelivery_and_dead_letter():
    topic = uniq("acks.t")
    async with AsyncExitStack() as s:
        ws = await connect(s)
        sub = await expect_type(ws, {"type": "subscribe", "subscription": {
            "type": "pattern", "patterns": [topic], "ack": True, "ack_timeout_ms": 200, "max_attempts": 5}},
            "subscribed")
        sid = sub["subscription_id"]
        pub = await connect(s)
        ev = await publish(pub, {"topic": topic})
        msg = await recv(ws)
        eq((msg.get("type"), msg.get("attempt")), ("event", 1), "first delivery")
        again = await recv(ws)  # not acked: redelivered after ack_timeout_ms
        eq((again.get("type"), again.get("attempt"), again["event"]["id"]), ("event", 2, ev["event_id"]),
           "redelivery")
        await ws.send(json.dumps({"type": "nack", "subscription_id": sid, "event_id": ev["event_id"],
                                  "requeue": False}))
        await still_open(ws)
        for _ in range(50):
            status, body = await ahttp("GET", "/api/dead-letters")
            eq(status, 200, "GET /api/dead-letters")
            mine = [d for d in body if d.get("event", {}).get("id") == ev["event_id"]]
            if mine:
                break
            await asyncio.sleep(0.05)
        check(mine, "nacked event not listed in /api/dead-letters")
        d = mine[0]
        eq((d.get("reason"), d.get("attempts"), d.get("subscription")), ("rejected", 2, sid), "dead letter")
        check(is_rfc3339(d.get("dead_at")), f"dead_at: {d!r}")
        status, _ = await ahttp("DELETE", f"/api/dead-letters/{d['id']}")
        eq(status, 204, "DELETE dead letter")
        await expect_error(ws, {"type": "ack", "subscription_id": sid, "event_id": "never-delivered"}, "unknown_event")


async def durable_resume():
    topic, name = uniq("durable.t"), uniq("d")
    spec = {"type": "pattern", "patterns": [topic], "durable": name}
    async with AsyncExitStack() as s:
        pub = await connect(s)
        async with websockets.connect(WS + "/ws", close_timeout=0.2) as ws:
            sid = (await expect_type(ws, {"type": "subscribe", "subscription": spec}, "subscribed"))["subscription_id"]
            eq((await recv(ws)).get("type"), "replay_complete", "new durable")
            a = await publish(pub, {"topic": topic, "payload": {"n": 1}})
            await publish(pub, {"topic": topic, "payload": {"n": 2}})
            got = [await recv(ws), await recv(ws)]
            await ws.send(json.dumps({"type": "ack", "subscription_id": sid, "event_id": a["event_id"]}))
            await still_open(ws)
            check([m["event"]["payload"]["n"] for m in got] == [1, 2], f"durable deliveries: {got!r}")
        await publish(pub, {"topic": topic, "payload": {"n": 3}})
        await asyncio.sleep(0.1)
        ws = await connect(s)
        await expect_type(ws, {"type": "subscribe", "subscription": spec}, "subscribed")
        resumed = []
        while True:
            m = await recv(ws)
            if m.get("type") == "replay_complete":
                break
            resumed.append(m["event"]["payload"]["n"])
        eq(resumed, [2, 3], "resumed after the last acknowledged event")


# ---------------------------------------------------------------- checks: client dialects (section 11)
async def todoki_seed_client():
    """todoki's useEventStream: the URL it builds, the fields it reads (flat, and its Event)."""
    topic = uniq("task.t")
    async with AsyncExitStack() as s:
        pub = await connect(s)
        before = await publish(pub, {"topic": topic})
        stored = await publish(pub, {"topic": topic, "agent_id": "a-7", "task_id": "t-3",
                                     "payload": {"title": "x"}, "metadata": {"session_id": "s-1"}})
        params = urllib.parse.urlencode({"kinds": "task.*,agent.*", "cursor": before["cursor"]})
        ws = await connect(s, f"/ws/event-bus?{params}")
        eq(await recv(ws), {"type": "subscribed", "kinds": ["task.*", "agent.*"], "cursor": before["cursor"]},
           "subscribed")
        msg = await recv(ws)
        eq(msg.get("type"), "event", f"replayed frame {msg!r}")
        fields = {"cursor": stored["cursor"], "kind": topic, "agent_id": "a-7", "session_id": "s-1",
                  "task_id": "t-3", "data": {"title": "x"}}
        for key, want in fields.items():
            eq(msg.get(key), want, f"event field {key}")
            eq(msg.get("event", {}).get(key), want, f"Event field {key}")
        check(is_rfc3339(msg.get("time")), f"event time: {msg!r}")
        done = await recv(ws)
        eq((done.get("type"), done.get("count")), ("replay_complete", 1), f"replay_complete {done!r}")
        check(is_int(done.get("cursor")) and done["cursor"] >= stored["cursor"], f"replay_complete cursor: {done!r}")
        live = await publish(pub, {"topic": "agent.started", "payload": {"n": 1}})
        msg = await recv(ws)
        eq((msg.get("type"), msg.get("cursor"), msg.get("kind")), ("event", live["cursor"], "agent.started"),
           "live event")
        eq(await command(ws, {"type": "ping"}), {"type": "pong"}, "ping")
        err = await command(ws, "not json")
        eq((err.get("type"), err.get("code")), ("error", "invalid_json"), f"error frame {err!r}")
        check(isinstance(err.get("message"), str), f"error message: {err!r}")


async def descartes_seed_client():
    """The Descartes EventClient: its Subscribe frame, its Event frame, Ping."""
    agent = uniq("agent-")
    async with AsyncExitStack() as s:
        ws = await connect(s, "/events")
        frame = {"type": "Subscribe", "payload": {"filter": {"agent_ids": [agent],
                                                              "event_categories": ["Agent", "Task"]}}}
        reply = await command(ws, json.dumps(frame))
        eq(reply.get("type"), "Subscribed", f"reply {reply!r}")
        check(isinstance(reply.get("payload", {}).get("subscription_id"), str), f"subscription_id: {reply!r}")
        pub = await connect(s)
        await publish(pub, {"topic": "agent.spawned", "agent_id": "someone-else"})
        sent = await publish(pub, {"topic": "agent.spawned", "agent_id": agent, "payload": {"config": "basic"}})
        msg = await recv(ws)
        eq((msg.get("type"), msg.get("payload", {}).get("type")), ("Event", "AgentEvent"), f"frame {msg!r}")
        data = msg["payload"].get("data", {})
        eq((data.get("id"), data.get("agent_id"), data.get("event_type"), data.get("data")),
           (sent["event_id"], agent, "spawned", {"config": "basic"}), "AgentEvent data")
        check(is_rfc3339(data.get("timestamp")), f"timestamp: {data!r}")
        everything = '{"type":"Subscribe","payload":{"filter":{"agent_ids":[],"task_ids":[],"workflow_ids":[],"event_categories":[]}}}'
        eq((await command(ws, everything)).get("type"), "Subscribed", "empty filter")
        await publish(pub, {"topic": "task.created", "task_id": "t-1"})
        msg = await recv(ws)
        eq((msg.get("payload", {}).get("type"), msg["payload"].get("data", {}).get("task_id")),
           ("TaskEvent", "t-1"), f"TaskEvent {msg!r}")
        eq((await command(ws, '{"type":"Ping"}')).get("type"), "Pong", "Ping")
        err = await command(ws, {"type": "Subscribe", "payload": {"filter": {"event_categories": ["Nope"]}}})
        eq((err.get("type"), err.get("payload", {}).get("code")), ("Error", "invalid_subscription"), f"{err!r}")
        status, body = await ahttp("GET", "/events")
        eq(status, 200, "GET /events without an upgrade")
        event_list(body, "GET /events")


CHECKS = [
    ("ping_pong", ping_pong), ("request_id_echo", request_id_echo), ("publish_variants", publish_variants),
    ("publish_duplicate", publish_duplicate), ("publish_batch_partial", publish_batch_partial),
    ("subscribe_all_envelope", subscribe_all_envelope), ("subscribe_client_id", subscribe_client_id),
    ("pattern_subscriptions", pattern_subscriptions), ("filtered_subscriptions", filtered_subscriptions),
    ("conditional_subscriptions", conditional_subscriptions),
    ("coalesced_subscription", coalesced_subscription), ("topic_derivation", topic_derivation), ("action_subscribe_alias", action_subscribe_alias),
    ("connect_topics", connect_topics), ("connect_kinds", connect_kinds), ("connect_agent_id", connect_agent_id),
    ("bare_root_upgrade", bare_root_upgrade), ("unsubscribe", unsubscribe), ("priority_order", priority_order),
    ("error_invalid_json", error_check("not json", "invalid_json")),
    ("error_unknown_command", error_check({"type": "explode"}, "unknown_command")),
    ("error_unsupported_frame", error_check(b"\x00\x01binary", "unsupported_frame")),
    ("error_invalid_event", error_check({"type": "publish_event", "event": {"payload": {}}}, "invalid_event")),
    ("error_invalid_pattern", error_check({"type": "subscribe", "subscription": {"type": "pattern",
                                           "patterns": ["task..x"]}}, "invalid_pattern")),
    ("error_invalid_subscription", error_check({"type": "subscribe", "subscription": {"type": "filtered"}},
                                               "invalid_subscription")),
    ("http_health_ready", http_health_ready), ("http_post_single", http_post_single),
    ("http_post_array", http_post_array), ("http_events_query", http_events_query),
    ("http_events_filters", http_events_filters), ("http_topics", http_topics), ("http_stats", http_stats),
    ("http_aliases", http_aliases), ("http_subscriptions", http_subscriptions), ("http_bad_param", http_bad_param),
    ("replay_from_cursor", replay_from_cursor), ("ack_redelivery_and_dead_letter", ack_redelivery_and_dead_letter),
    ("durable_resume", durable_resume),
    ("todoki_seed_client", todoki_seed_client), ("descartes_seed_client", descartes_seed_client),
]


# ---------------------------------------------------------------- server and main
DATA_DIR = tempfile.TemporaryDirectory(prefix="switchyard-conformance-")


def start_server(binary, data_dir=None, extra_env=None):
    env = dict(os.environ, RUST_LOG="info", SWITCHYARD_SERVER__HEARTBEAT_INTERVAL_MS="30000", **(extra_env or {}))
    # The default store is SQLite: give it a fresh data directory of its own.
    proc = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir or DATA_DIR.name],
                            env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()

    def drain():  # keep reading so the server never blocks on a full stderr pipe
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)
    threading.Thread(target=drain, daemon=True).start()
    return proc, lines


def wait_for_port(lines, timeout=20.0):
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            raise RuntimeError("server exited before listening")
        m = re.search(r"switchyard listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            return int(m.group(1))
    raise RuntimeError(f"no 'switchyard listening on' line within {timeout:.0f} s")


def stop_server(proc):
    if proc.poll() is not None:
        return proc.returncode, "server had already exited"
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=10), None
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None, "did not exit within 10 s of SIGTERM (killed)"


async def run_checks(results, checks=None):
    for name, fn in checks or CHECKS:
        try:
            await asyncio.wait_for(fn(), 20)
            results.append((name, None))
        except asyncio.TimeoutError:
            results.append((name, "check timed out after 20 s"))
        except Exception as e:  # noqa: BLE001 - every failure is reported, never fatal
            results.append((name, str(e) or type(e).__name__))
        print(f"PASS {name}" if results[-1][1] is None else f"FAIL {name}: {results[-1][1]}", flush=True)


PLANNER_TOKEN = "planner-token-0123456789"
OPS_TOKEN = "ops-token-0123456789abcd"
TOKENS_FILE = f"""
[[tokens]]
name = "planner"
token = "{PLANNER_TOKEN}"
publish = ["task.>"]
subscribe = ["task.>"]

[[tokens]]
name = "ops"
token = "{OPS_TOKEN}"
publish = [">"]
subscribe = [">"]
admin = true
"""


def ws_connect_with_token(url, token):
    return websockets.connect(url, open_timeout=RECV_TIMEOUT, close_timeout=0.2,
                              additional_headers={"Authorization": f"Bearer {token}"})


def upgrade_status(exc):
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) or getattr(exc, "status_code", None)


async def auth_upgrade_needs_token():
    for url in (WS + "/ws", WS + "/ws?token=wrong-token-0123456789"):
        try:
            async with websockets.connect(url, open_timeout=RECV_TIMEOUT):
                pass
        except Exception as e:  # noqa: BLE001 - the refusal is the point
            eq(upgrade_status(e), 401, f"upgrade {url} without a valid token")
        else:
            raise CheckFailed(f"upgrade {url} without a valid token was accepted")
    async with websockets.connect(WS + f"/ws?token={PLANNER_TOKEN}", open_timeout=RECV_TIMEOUT,
                                  close_timeout=0.2) as ws:
        await still_open(ws)
    async with ws_connect_with_token(WS + "/ws", PLANNER_TOKEN) as ws:
        await still_open(ws)


async def auth_http_needs_token():
    def get(path, token=None):
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        req = urllib.request.Request(BASE + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=RECV_TIMEOUT) as resp:
                return resp.status, dict(resp.headers)
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers)
    status, headers = await asyncio.to_thread(get, "/api/stats")
    eq(status, 401, "GET /api/stats without a token")
    check(headers.get("WWW-Authenticate", headers.get("www-authenticate", "")).lower().startswith("bearer"),
          f"401 without WWW-Authenticate: Bearer: {headers}")
    eq((await asyncio.to_thread(get, "/api/stats", PLANNER_TOKEN))[0], 200, "GET /api/stats with a token")
    eq((await asyncio.to_thread(get, "/api/dead-letters", PLANNER_TOKEN))[0], 403, "dead letters as a non-admin")
    eq((await asyncio.to_thread(get, "/api/dead-letters", OPS_TOKEN))[0], 200, "dead letters as an admin")
    eq((await asyncio.to_thread(get, "/health"))[0], 200, "/health stays open")


async def auth_grants():
    async with ws_connect_with_token(WS + "/ws", OPS_TOKEN) as ops, \
            ws_connect_with_token(WS + "/ws", PLANNER_TOKEN) as planner:
        await expect_type(planner, {"type": "subscribe", "subscription": {"type": "all"}}, "subscribed")
        await expect_error(planner, {"type": "publish_event", "event": {"topic": "agent.started"}}, "forbidden")
        await expect_error(planner, {"type": "subscribe", "subscription": {"patterns": ["agent.>"]}}, "forbidden")
        await publish(ops, {"topic": "agent.started"})
        mine = await publish(ops, {"topic": "task.created"})
        ev = await next_event(planner)
        eq(ev.get("id"), mine["event_id"], "narrowed `all` subscription: first delivery is the granted topic")
        eq(ev.get("source"), "ops", "default source is the principal")


async def auth_dialects_need_token():
    for path in ("/ws/event-bus?kinds=task.*", "/events"):
        try:
            async with websockets.connect(WS + path, open_timeout=RECV_TIMEOUT):
                pass
        except Exception as e:  # noqa: BLE001 - the refusal is the point
            eq(upgrade_status(e), 401, f"upgrade {path} without a token")
        else:
            raise CheckFailed(f"upgrade {path} without a token was accepted")
    # todoki's browser hook passes `token` in the query.
    async with websockets.connect(WS + f"/ws/event-bus?kinds=task.*&token={PLANNER_TOKEN}",
                                  open_timeout=RECV_TIMEOUT, close_timeout=0.2) as ws:
        eq((await recv(ws)).get("type"), "subscribed", "todoki with ?token=")
    async with ws_connect_with_token(WS + "/events", PLANNER_TOKEN) as ws:
        eq((await command(ws, '{"type":"Subscribe","payload":{"filter":{"event_categories":["Task"]}}}')).get("type"),
           "Subscribed", "Descartes with a bearer token")


AUTH_CHECKS = [("auth_upgrade_needs_token", auth_upgrade_needs_token),
               ("auth_http_needs_token", auth_http_needs_token), ("auth_grants", auth_grants),
               ("auth_dialects_need_token", auth_dialects_need_token)]


def auth_phase(binary, results):
    global BASE, WS
    with tempfile.TemporaryDirectory() as d:
        tokens = os.path.join(d, "tokens.toml")
        with open(tokens, "w") as f:
            f.write(TOKENS_FILE)
        proc, lines = start_server(binary, data_dir=d, extra_env={"SWITCHYARD_AUTH__TOKENS_FILE": tokens})
        try:
            port = wait_for_port(lines)
            BASE, WS = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
            asyncio.run(run_checks(results, AUTH_CHECKS))
        except RuntimeError as e:
            results.append(("auth_server_start", str(e)))
            print(f"FAIL auth_server_start: {e}", flush=True)
        finally:
            stop_server(proc)


def main():
    global BASE, WS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default="target/debug/switchyard")
    binary = os.path.abspath(ap.parse_args().binary)
    results = []
    try:
        proc, lines = start_server(binary)
    except OSError as e:
        print(f"FAIL server_start: cannot run {binary}: {e}")
        print("0 passed, 1 failed")
        sys.exit(1)
    try:
        try:
            port = wait_for_port(lines)
        except RuntimeError as e:
            results.append(("server_start", str(e)))
            print(f"FAIL server_start: {e}", flush=True)
        else:
            BASE, WS = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
            asyncio.run(run_checks(results))
    finally:
        code, why = stop_server(proc)
    failure = why or (None if code == 0 else f"exit code {code} after SIGTERM, expected 0")
    results.append(("graceful_shutdown", failure))
    print("PASS graceful_shutdown" if failure is None else f"FAIL graceful_shutdown: {failure}")
    auth_phase(binary, results)
    failed = sum(1 for _, f in results if f is not None)
    print(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

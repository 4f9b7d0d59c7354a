"""Checks of the original protocol with Python's `websockets`, as the original's clients used it.

Usage: python3 compat_checks.py ws://HOST:PORT
Exits 0 when every check passes; prints each check's name.
"""

import asyncio
import json
import sys

import websockets

URL = sys.argv[1]


async def recv_type(ws, kind):
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame["type"] == kind:
            return frame


async def register(agent):
    ws = await websockets.connect(URL)
    await ws.send(json.dumps({"type": "register", "agent_id": agent}))
    assert (await recv_type(ws, "registered"))["agent_id"] == agent
    return ws


async def publish(ws, topic, content, **extra):
    await ws.send(json.dumps({"type": "send", "topic": topic, "content": content, **extra}))
    return await recv_type(ws, "ack")


async def history_on_subscribe():
    p = await register("py-publisher")
    for i in range(12):
        await publish(p, "py-history", f"m{i}")
    s = await register("py-late")
    await s.send(json.dumps({"type": "subscribe", "topic": "py-history"}))
    sub = await recv_type(s, "subscribed")
    assert sub["offset"] == 12, sub
    got = [json.loads(await s.recv()) for _ in range(10)]
    assert [m["content"] for m in got] == [f"m{i}" for i in range(2, 12)], got
    assert all(m["replay"] is True for m in got)
    await p.close()
    await s.close()


async def recovery_with_since():
    p = await register("py-rec-pub")
    for i in range(5):
        await publish(p, "py-recover", i)
    s = await register("py-rec-sub")
    await s.send(json.dumps({"type": "subscribe", "topic": "py-recover", "since": 2}))
    sub = await recv_type(s, "subscribed")
    assert sub["recovered"] is True, sub
    got = [json.loads(await s.recv())["offset"] for _ in range(3)]
    assert got == [3, 4, 5], got
    await p.close()
    await s.close()


async def direct_and_offline_messages():
    boss = await register("py-boss")
    await boss.send(json.dumps({"type": "send", "to_agent": "py-worker", "content": "while you were out"}))
    ack = await recv_type(boss, "ack")
    assert ack["topic"] == "@py-worker" and ack["delivered"] == 0, ack
    worker = await register("py-worker")
    m = await recv_type(worker, "message")
    assert m["content"] == "while you were out" and m["from_agent"] == "py-boss", m
    await boss.send(json.dumps({"type": "send", "to_agent": "py-worker", "content": "live"}))
    m = await recv_type(worker, "message")
    assert m["content"] == "live" and "replay" not in m, m
    await boss.close()
    await worker.close()


async def idempotent_send():
    p = await register("py-idem")
    a1 = await publish(p, "py-idem", "x", id="py-fixed-id")
    a2 = await publish(p, "py-idem", "x", id="py-fixed-id")
    assert a1["offset"] == a2["offset"] == 1 and a2.get("duplicate") is True, (a1, a2)
    await p.close()


async def errors_keep_the_connection():
    ws = await websockets.connect(URL)
    for text, code in [
        ("nope", "invalid_json"),
        ('{"type":"fly","ref":"r1"}', "unknown_type"),
        ('{"type":"subscribe"}', "missing_field"),
        ('{"type":"subscribe","topic":"bad topic"}', "invalid_topic"),
        ('{"type":"send","topic":"t","content":1}', "not_registered"),
    ]:
        await ws.send(text)
        e = json.loads(await ws.recv())
        assert e["type"] == "error" and e["code"] == code, (text, e)
    await ws.send(json.dumps({"type": "ping", "ref": 5}))
    assert json.loads(await ws.recv()) == {"type": "pong", "ref": 5}
    await ws.close()


async def main():
    for check in [history_on_subscribe, recovery_with_since, direct_and_offline_messages, idempotent_send,
                  errors_keep_the_connection]:
        await check()
        print(f"ok {check.__name__}", flush=True)


asyncio.run(main())

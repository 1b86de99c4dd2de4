"""Clients chatting through a rolling restart: many unmodified
python-socketio clients (asyncio, default reconnection) behind a load
balancer, in several rooms, each sending a few messages a second. Like the
bundled web client, a client remembers the newest chat_id it has per room
and, whenever it (re)connects, joins with it as `last_chat_id`, so the
server replays what it missed (docs/protocol.md, "Ordering, delivery and catch-up").

usage: rolling.py URL USERS_FILE RATE [--no-catch-up]
  USERS_FILE: "name token room_id" lines; RATE: messages/s in all.
  --no-catch-up: rejoin without last_chat_id (how clients did before).

Protocol on stdin/stdout (one JSON object per line on stdout):
- prints {"ready": N} once every client is connected and has joined, and
  starts sending;
- stdin line "stop": stops sending, waits until the rooms are quiet (every
  message any client acknowledged or received has reached every member of
  its room, at most 30 s), then prints the summary and exits:
  {"clients", "rooms", "acked", "received", "reconnects", "refused",
   "missing", "duplicates", "out_of_order", "worst": [...]}
  `missing`: messages of a room (acknowledged to anyone, or received by
  anyone) that a member of the room never received.
"""
import asyncio
import random
import sys
import time

from spread import Client, checked_ack, say

URL, USERS_FILE, RATE = sys.argv[1], sys.argv[2], float(sys.argv[3])
CATCH_UP = "--no-catch-up" not in sys.argv[4:]
USERS = [line.split() for line in open(USERS_FILE) if line.strip()]
READY_WITHIN = 60
QUIET_WITHIN = 30


class Member(Client):
    def __init__(self, index, name, token, room):
        super().__init__(index, name, token)
        self.room = int(room)
        self.joined = asyncio.Event()
        self.received = []  # chat ids of new_message, in arrival order
        self.acked = []  # chat ids of our own acknowledged messages
        self.connects = 0
        self.refused = 0

    async def start(self):
        await super().start(URL, {"connect": self.on_connect, "disconnect": self.on_disconnect,
                                  "new_message": self.on_new_message})

    async def on_connect(self):
        self.connects += 1
        join = {"room_id": self.room, "user_name": self.name}
        if CATCH_UP and self.received:
            join["last_chat_id"] = self.received[-1]
        await self.sio.emit("join", join, callback=checked_ack("join", self.on_join_ack))

    def on_join_ack(self, ack=None):
        if isinstance(ack, dict) and "error" not in ack:
            self.joined.set()

    async def on_disconnect(self, *args):
        self.joined.clear()

    async def on_new_message(self, data):
        if data.get("room_id") == self.room:
            self.received.append(data["chat_id"])

    def on_message_ack(self, ack=None):
        if isinstance(ack, dict) and isinstance(ack.get("chat_id"), int):
            self.acked.append(ack["chat_id"])
        else:
            self.refused += 1

    async def chat(self, per_second, stop):
        n = 0
        while not stop.is_set():
            await asyncio.sleep(random.expovariate(per_second))
            if not self.joined.is_set():
                continue
            n += 1
            try:
                await self.sio.emit("message", {"room_id": self.room, "user_name": self.name,
                                                "message": f"{self.name} {n}"},
                                    callback=checked_ack("message", self.on_message_ack))
            except Exception:  # disconnected meanwhile: not sent
                self.refused += 1


def expected_by_room(members):
    rooms = {}
    for m in members:
        rooms.setdefault(m.room, set()).update(m.acked, m.received)
    return rooms


async def wait_quiet(members):
    deadline = time.monotonic() + QUIET_WITHIN
    while time.monotonic() < deadline:
        rooms = expected_by_room(members)
        if all(rooms[m.room] <= set(m.received) for m in members):
            return
        await asyncio.sleep(0.2)


async def main():
    members = [Member(i, name, token, room) for i, (name, token, room) in enumerate(USERS)]
    await asyncio.gather(*(m.start() for m in members))
    await asyncio.wait_for(asyncio.gather(*(m.joined.wait() for m in members)), READY_WITHIN)
    stop = asyncio.Event()
    chatting = [asyncio.create_task(m.chat(RATE / len(members), stop)) for m in members]
    say({"ready": len(members)})
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "stop":
            break
    stop.set()
    await asyncio.gather(*chatting)
    await asyncio.sleep(1)  # the last acknowledgements
    await wait_quiet(members)
    rooms = expected_by_room(members)
    missing = duplicates = out_of_order = 0
    worst = []
    for m in members:
        got = m.received
        lacking = len(rooms[m.room] - set(got))
        missing += lacking
        duplicates += len(got) - len(set(got))
        out_of_order += sum(1 for a, b in zip(got, got[1:]) if b <= a)
        if lacking:
            worst.append({"client": m.name, "missing": lacking, "connects": m.connects})
    say({"clients": len(members), "rooms": len(rooms),
         "acked": sum(len(m.acked) for m in members),
         "received": sum(len(m.received) for m in members),
         "reconnects": sum(m.connects - 1 for m in members),
         "refused": sum(m.refused for m in members),
         "missing": missing, "duplicates": duplicates, "out_of_order": out_of_order,
         "worst": sorted(worst, key=lambda w: -w["missing"])[:5]})
    await asyncio.gather(*(m.stop() for m in members), return_exceptions=True)


asyncio.run(main())

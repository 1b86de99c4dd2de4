"""Many unmodified python-socketio clients (asyncio, with their default
reconnection) behind a load balancer, each rejoining its room whenever it
(re)connects, as real clients do. Half use the default transports (polling,
then the upgrade), half WebSocket only; they connect from different
loopback addresses so that the balancer spreads them over the gateways.

usage: reconnect.py URL ROOM_ID USERS_FILE   (USERS_FILE: "name token ..." lines)

Protocol on stdin/stdout (one JSON object per line on stdout):
- prints {"ready": N} once every client is connected and has joined;
- on each stdin line "round N" (N: how many sockets the gateway just
  killed held), waits until N clients have seen their connection close,
  then until every client that lost its connection since the previous
  round is connected and joined again (at most 30 s in all), then prints {"round": ..., "lost": K, "rejoined": K,
  "max_ms": T}, T being the longest time from the "round" line to a
  client's rejoin;
- stdin closed: disconnects every client and exits.
"""
import asyncio
import sys
import time

from spread import Client, say

URL, ROOM = sys.argv[1], int(sys.argv[2])
USERS = [line.split() for line in open(sys.argv[3]) if line.strip()]
READY_WITHIN = 60
ROUND_WITHIN = 30


class Member(Client):
    def __init__(self, index, name, token):
        super().__init__(index, name, token)
        self.joined = asyncio.Event()
        self.lost = False
        self.joined_at = 0.0

    async def start(self):
        await super().start(URL, {"connect": self.on_connect, "disconnect": self.on_disconnect,
                                  "user_joined": self.on_user_joined})

    async def on_connect(self):
        await self.sio.emit("join", {"room_id": ROOM, "user_name": self.name})

    async def on_disconnect(self, *args):
        self.lost = True
        self.joined.clear()

    def describe(self):
        """What a client that did not rejoin is doing, for the test's report."""
        sio = self.sio
        return {"name": self.name, "transports": self.transports or "default", "local": self.local,
                "connected": sio.connected, "sid": sio.sid, "eio_state": sio.eio.state,
                "transport": sio.eio.current_transport,
                "reconnecting": getattr(sio, "_reconnect_task", None) is not None}

    async def on_user_joined(self, data):
        if data.get("user_name") == self.name and data.get("room_id") == ROOM:
            self.joined_at = time.monotonic()
            self.joined.set()


async def main():
    members = [Member(i, name, token) for i, (name, token, *_) in enumerate(USERS)]
    await asyncio.gather(*(m.start() for m in members))
    await asyncio.wait_for(asyncio.gather(*(m.joined.wait() for m in members)), READY_WITHIN)
    for m in members:
        m.lost = False
    say({"ready": len(members)})
    loop = asyncio.get_running_loop()
    rounds = 0
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        started = time.monotonic()
        deadline = started + ROUND_WITHIN
        rounds += 1
        held = int(line.split()[1]) if len(line.split()) > 1 else 0

        def lost_now():
            return [m for m in members if m.lost or not m.joined.is_set()]

        # Each client of the killed gateway sees its connection close, on a
        # loaded machine some only after a while: wait for all of them.
        while len(lost_now()) < held and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        lost = lost_now()
        try:
            await asyncio.wait_for(asyncio.gather(*(m.joined.wait() for m in lost)),
                                   max(deadline - time.monotonic(), 0.1))
        except asyncio.TimeoutError:
            pass
        rejoined = [m for m in lost if m.joined.is_set()]
        slowest = max((m.joined_at - started for m in rejoined), default=0.0)
        say({"round": rounds, "lost": len(lost), "rejoined": len(rejoined),
             "max_ms": round(slowest * 1000),
             "stranded": [m.describe() for m in lost if not m.joined.is_set()]})
        for m in members:
            m.lost = False
    await asyncio.gather(*(m.stop() for m in members), return_exceptions=True)


asyncio.run(main())

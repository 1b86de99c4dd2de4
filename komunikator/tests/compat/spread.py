"""What the many-client scripts share: python-socketio clients spread over
a load balancer's gateways. Half use the default transports (polling, then
the upgrade), half WebSocket only; they connect from different loopback
addresses so that the balancer spreads them. What they receive is checked
against docs/asyncapi.yaml; what it does not describe is reported on every
line the script prints, as "undocumented"."""
import asyncio
import json

import aiohttp
import socketio

from documented import ack_problem, event_problem

# What the clients received that the document does not describe (the
# first few).
UNDOCUMENTED = []
LIFECYCLE = {"connect", "disconnect", "connect_error"}


def _note(problem):
    if problem is not None and len(UNDOCUMENTED) < 5:
        UNDOCUMENTED.append(problem)


def checked_ack(event, callback):
    """`callback` for the acknowledgement of `event`, checking it first."""
    def check(*args):
        _note(ack_problem(event, args[0] if args else None))
        return callback(*args)
    return check


def _checked(event, handler):
    async def check(*args):
        _note(event_problem(event, args[0] if args else None))
        return await handler(*args)
    return check


# How often a client checks that python-socketio did not strand it.
STRANDED_CHECK = 0.25


class Client:
    # Clients found stranded by python-socketio and connected again.
    stranded_by_library = 0

    def __init__(self, index, name, token):
        self.name = name
        self.token = token
        self.transports = None if index % 2 == 0 else ["websocket"]
        self.local = f"127.0.0.{2 + index % 50}"
        self.session = None
        self.sio = None
        self.url = None
        self.guard = None

    async def start(self, url, handlers):
        """Connects to `url` with the token, `handlers` mapping event names
        to coroutines (registered before connecting)."""
        connector = aiohttp.TCPConnector(local_addr=(self.local, 0), force_close=False)
        self.session = aiohttp.ClientSession(connector=connector)
        self.sio = socketio.AsyncClient(http_session=self.session)
        for event, handler in handlers.items():
            self.sio.on(event, handler if event in LIFECYCLE else _checked(event, handler))
        self.url = url
        await self.connect()
        self.guard = asyncio.create_task(self.guard_against_stranding())

    async def connect(self):
        await self.sio.connect(self.url, auth={"token": self.token}, transports=self.transports,
                               wait_timeout=10)

    def stranded(self):
        """python-socketio's AsyncClient can strand a client: when its
        transport drops while its own reconnection task is in `connect()`,
        between the namespace's answer and the end of `connect()`, the drop
        is not handled (the client is not marked connected yet) and no new
        reconnection starts (one is running); `connect()` then marks it
        connected on a dead transport, for good (python-socketio issues #940
        and #459, still so in 5.18). What the server does cannot prevent
        it: the transport went away."""
        sio = self.sio
        return (sio.connected and sio.eio.state == "disconnected"
                and getattr(sio, "_reconnect_task", None) is None)

    async def guard_against_stranding(self):
        """Connects again, as an application that checks its transport
        does, a client the library stranded (counted, and reported)."""
        while True:
            await asyncio.sleep(STRANDED_CHECK)
            if not self.stranded():
                continue
            Client.stranded_by_library += 1
            await self.sio.disconnect()
            while not self.sio.connected:
                try:
                    await self.connect()
                except Exception:  # noqa: BLE001 (any failure: try again)
                    await asyncio.sleep(STRANDED_CHECK)

    async def stop(self):
        if self.guard is not None:
            self.guard.cancel()
        try:
            await self.sio.disconnect()
        finally:
            await self.session.close()


def say(obj):
    """One JSON line on stdout, for the test reading it."""
    if UNDOCUMENTED:
        obj = {**obj, "undocumented": UNDOCUMENTED}
    if Client.stranded_by_library:
        obj = {**obj, "stranded_by_library": Client.stranded_by_library}
    print(json.dumps(obj), flush=True)

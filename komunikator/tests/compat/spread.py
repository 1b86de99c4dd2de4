"""What the many-client scripts share: python-socketio clients spread over
a load balancer's gateways. Half use the default transports (polling, then
the upgrade), half WebSocket only; they connect from different loopback
addresses so that the balancer spreads them. What they receive is checked
against docs/asyncapi.yaml; what it does not describe is reported on every
line the script prints, as "undocumented"."""
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


class Client:
    def __init__(self, index, name, token):
        self.name = name
        self.token = token
        self.transports = None if index % 2 == 0 else ["websocket"]
        self.local = f"127.0.0.{2 + index % 50}"
        self.session = None
        self.sio = None

    async def start(self, url, handlers):
        """Connects to `url` with the token, `handlers` mapping event names
        to coroutines (registered before connecting)."""
        connector = aiohttp.TCPConnector(local_addr=(self.local, 0), force_close=False)
        self.session = aiohttp.ClientSession(connector=connector)
        self.sio = socketio.AsyncClient(http_session=self.session)
        for event, handler in handlers.items():
            self.sio.on(event, handler if event in LIFECYCLE else _checked(event, handler))
        await self.sio.connect(url, auth={"token": self.token}, transports=self.transports,
                               wait_timeout=10)

    async def stop(self):
        try:
            await self.sio.disconnect()
        finally:
            await self.session.close()


def say(obj):
    """One JSON line on stdout, for the test reading it."""
    if UNDOCUMENTED:
        obj = {**obj, "undocumented": UNDOCUMENTED}
    print(json.dumps(obj), flush=True)

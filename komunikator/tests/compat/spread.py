"""What the many-client scripts share: python-socketio clients spread over
a load balancer's gateways. Half use the default transports (polling, then
the upgrade), half WebSocket only; they connect from different loopback
addresses so that the balancer spreads them."""
import json

import aiohttp
import socketio


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
            self.sio.on(event, handler)
        await self.sio.connect(url, auth={"token": self.token}, transports=self.transports,
                               wait_timeout=10)

    async def stop(self):
        try:
            await self.sio.disconnect()
        finally:
            await self.session.close()


def say(obj):
    """One JSON line on stdout, for the test reading it."""
    print(json.dumps(obj), flush=True)

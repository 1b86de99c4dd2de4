"""Drives a Komunikator deployment with the unmodified python-socketio 5.x
client, as existing script clients do. Every event and acknowledgement it
receives is checked against docs/asyncapi.yaml. Exits 0 when every check
passes.

usage: socketio_client.py API_URL GATEWAY_URL TRANSPORT PRESENCE_TIMEOUT_MS
  TRANSPORT: default | websocket; PRESENCE_TIMEOUT_MS: the server's.
"""
import sys
import threading
import time
import uuid

import requests
import socketio

from documented import check_ack, check_event

API, GATEWAY, TRANSPORT = sys.argv[1:4]
PRESENCE_TIMEOUT = int(sys.argv[4]) / 1000
TRANSPORTS = None if TRANSPORT == "default" else [TRANSPORT]
WAIT = 5


def register(stem):
    name = f"{stem}_{uuid.uuid4().hex[:6]}"
    r = requests.post(f"{API}/api/register", json={"user_name": name, "password": "pw"})
    assert r.status_code == 201, r.text
    return name, r.json()["access_token"]


def login(name):
    r = requests.post(f"{API}/api/login", json={"user_name": name, "password": "pw"})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


class Client:
    """A python-socketio client recording every event it receives."""

    def __init__(self, token, presence=None):
        self.events = []
        self.cond = threading.Condition()
        self.sio = socketio.Client(reconnection=False)
        self.sio.on("*", self._record)
        # Zero-argument handlers must work for events without payload.
        self.sio.on("room_list_updated", lambda: self._record("room_list_updated"))
        self.sio.on("user_list_updated", lambda: self._record("user_list_updated"))
        auth = {"token": token}
        if presence:
            auth["presence"] = presence
        self.sio.connect(GATEWAY, auth=auth, transports=TRANSPORTS, wait_timeout=WAIT)

    def _record(self, event, *args):
        payload = check_event(event, args[0] if args else None)
        with self.cond:
            self.events.append((event, payload))
            self.cond.notify_all()

    def call(self, event, payload, wait=WAIT):
        """Emits `event` asking for an acknowledgement, checked, and returns it."""
        return check_ack(event, self.sio.call(event, payload, timeout=wait))

    def wait_for(self, event, check=lambda payload: True, wait=WAIT):
        deadline = time.time() + wait
        with self.cond:
            while True:
                for i, (name, payload) in enumerate(self.events):
                    if name == event and check(payload):
                        del self.events[i]
                        return payload
                left = deadline - time.time()
                assert left > 0, f"no {event} within {wait}s; got {self.events}"
                self.cond.wait(left)


def main():
    ann, ann_token = register("ann")
    bob, bob_token = register("bob")
    headers = {"Authorization": f"Bearer {ann_token}"}
    room = requests.post(f"{API}/api/room/create", headers=headers,
                         json={"room_name": "compat", "is_private": False}).json()["room_id"]
    requests.post(f"{API}/api/room/join_public", headers={"Authorization": f"Bearer {bob_token}"},
                  json={"room_id": room})

    # What a browser on another origin needs before socket.io-client can
    # connect over long-polling: CORS on the handshake and its preflight.
    origin = {"Origin": "http://page.example.test"}
    polling = f"{GATEWAY}/socket.io/?EIO=4&transport=polling"
    r = requests.options(polling, headers={**origin, "Access-Control-Request-Method": "POST",
                                           "Access-Control-Request-Headers": "content-type"})
    assert r.ok and r.headers.get("Access-Control-Allow-Origin") == "*", (r.status_code, r.headers)
    r = requests.get(polling, headers=origin)
    assert r.status_code == 200 and r.headers.get("Access-Control-Allow-Origin") == "*", r.headers
    assert r.text.startswith("0{"), r.text

    a, b = Client(ann_token), Client(bob_token)
    # Ann's second socket takes presence in batches.
    batched = Client(ann_token, presence="batched")
    if TRANSPORT == "default":
        # Long-polling first, then the upgrade to WebSocket.
        deadline = time.time() + WAIT
        while a.sio.transport() != "websocket" and time.time() < deadline:
            time.sleep(0.05)
        assert a.sio.transport() == "websocket", a.sio.transport()

    joined = a.call("join", {"room_id": room, "user_name": ann})
    assert joined == {"room_id": room, "replayed": 0, "complete": True}, joined
    a.wait_for("user_joined", lambda p: p == {"user_name": ann, "room_id": room})
    batched.call("join", {"room_id": room})
    b.call("join", {"room_id": room, "user_name": bob})
    a.wait_for("user_joined", lambda p: p["user_name"] == bob)
    b.wait_for("user_joined", lambda p: p["user_name"] == bob)

    ack = a.call("message", {"room_id": room, "user_name": ann, "message": "zażółć 😀"})
    assert set(ack) == {"chat_id"}, ack
    for client in (a, b):
        m = client.wait_for("new_message")
        assert m["chat_id"] == ack["chat_id"] and m["user_name"] == ann, m
        assert m["message"] == "zażółć 😀" and m["room_id"] == room, m
        assert m["create_date"].endswith("Z"), m

    # A refused event: the error event and a refused acknowledgement.
    refused = b.call("message", {"room_id": room, "user_name": ann, "message": "spoof"})
    assert refused == {"error": "Forbidden", "code": 5}, refused
    assert b.wait_for("error") == {"message": "Forbidden", "code": 5}
    b.sio.emit("message", "not an object")
    assert b.wait_for("error") == {"message": "Invalid payload", "code": 7}

    # A reconnecting client catches up from the newest chat_id it has.
    b.sio.disconnect()
    b = Client(bob_token)
    caught_up = b.call("join", {"room_id": room, "last_chat_id": ack["chat_id"] - 1})
    assert caught_up == {"room_id": room, "replayed": 1, "complete": True}, caught_up
    assert b.wait_for("new_message")["chat_id"] == ack["chat_id"]
    a.wait_for("user_joined", lambda p: p["user_name"] == bob)

    # A fresher token for the open socket.
    assert b.call("refresh", {"token": login(bob)}) == {"ok": True}
    assert b.call("refresh", {"token": "not a token"}) == {"error": "Session expired", "code": 9}
    assert b.wait_for("error") == {"message": "Session expired", "code": 9}
    assert b.call("refresh", {"token": ann_token}) == {"error": "Forbidden", "code": 5}
    assert b.wait_for("error") == {"message": "Forbidden", "code": 5}

    b.sio.emit("watchdog", {"user_name": bob})
    a.wait_for("user_online", lambda p: p == {"user_name": bob})
    batched.wait_for("presence", lambda p: p == {"room_id": room, "online": [bob], "offline": []})
    requests.post(f"{API}/api/room/create", headers=headers, json={"room_name": "another"})
    a.wait_for("room_list_updated")
    b.wait_for("room_list_updated")

    b.sio.emit("leave", {"room_id": room, "user_name": bob})
    a.wait_for("user_left", lambda p: p == {"user_name": bob, "room_id": room})
    # Bob's heartbeat stopped: offline once the presence timeout passes.
    a.wait_for("user_offline", lambda p: p == {"user_name": bob}, wait=PRESENCE_TIMEOUT + WAIT)
    batched.wait_for("presence", lambda p: p == {"room_id": room, "online": [], "offline": [bob]})
    assert not [e for e, _ in batched.events if e in ("user_online", "user_offline")], batched.events

    r = requests.post(f"{API}/api/user_kick", headers=headers, json={"room_id": room, "user_to_kick": bob})
    assert r.status_code == 200, r.text
    a.wait_for("user_kicked", lambda p: p == {"user_name": bob})
    a.wait_for("user_list_updated")

    # Without a token the connection is refused.
    try:
        socketio.Client(reconnection=False).connect(GATEWAY, transports=TRANSPORTS, wait_timeout=WAIT)
        raise AssertionError("connected without a token")
    except socketio.exceptions.ConnectionError:
        pass

    a.sio.disconnect()
    b.sio.disconnect()
    batched.sio.disconnect()
    print("python-socketio compatibility: all checks passed")


if __name__ == "__main__":
    main()

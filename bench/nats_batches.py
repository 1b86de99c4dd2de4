"""Durable publish rates straight on nats-server, without Komunikator: one
message per publish (1 and 100 in flight) against JetStream's atomic batch
publish (ADR-50, nats-server 2.12+), on a file stream allowing atomic
publishes. For the performance issue's durable-speed item: whether
batching the gateway's publishes would let a server with `sync_interval:
always` sync many messages at once (bench/README.md, "Durability").

    python3 bench/nats_batches.py <port> [replicas]

against a running nats-server (bench/durability.sh's start_nats, or one on
deploy/nats/nats.conf); it deletes and recreates the stream T (t.>).
"""
import json, socket, sys, time, uuid

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 4333

class Conn:
    def __init__(self):
        self.s = socket.create_connection(("127.0.0.1", PORT))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.s.makefile("rb")
        self.f.readline()
        self.s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"protocol":1}\r\nPING\r\n')
        assert self.f.readline().startswith(b"PONG"), "no pong"
        self.s.sendall(b"SUB _INBOX.x.> 1\r\n")

    def read_msg(self):
        while True:
            line = self.f.readline()
            if line.startswith(b"PING"):
                self.s.sendall(b"PONG\r\n"); continue
            if line.startswith(b"MSG"):
                parts = line.split()
                n = int(parts[-1]); data = self.f.read(n + 2)[:-2]
                return parts[1].decode(), data
            if line.startswith(b"HMSG"):
                parts = line.split()
                n = int(parts[-1]); data = self.f.read(n + 2)[:-2]
                h = int(parts[-2])
                return parts[1].decode(), data[h:]
            if line.startswith(b"-ERR"):
                raise RuntimeError(line)

    def request(self, subject, body):
        self.s.sendall(b"PUB %s _INBOX.x.req %d\r\n%s\r\n" % (subject.encode(), len(body), body))
        return json.loads(self.read_msg()[1])

    def hpub(self, subject, reply, headers, payload):
        h = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        hb = h.encode()
        target = f"{subject} {reply}" if reply else subject
        return b"HPUB %s %d %d\r\n%s%s\r\n" % (target.encode(), len(hb), len(hb) + len(payload), hb, payload)

PAYLOAD = b"x" * 100

def closed_loop(c, units, inflight, unit):
    """Sends `units` publishes of `unit(i)` bytes each, `inflight` at a
    time, each acknowledged once; returns the seconds taken and the last
    acknowledgement."""
    t0 = time.time()
    sent = min(inflight, units)
    c.s.sendall(b"".join(unit(i) for i in range(sent)))
    for _ in range(units):
        ack = json.loads(c.read_msg()[1])
        assert "error" not in ack, ack
        if sent < units:
            c.s.sendall(unit(sent))
            sent += 1
    return time.time() - t0, ack

def single(c, total, inflight):
    def unit(i):
        return c.hpub("t.a", f"_INBOX.x.{i}", [("Nats-Msg-Id", uuid.uuid4().hex)], PAYLOAD)
    seconds, _ = closed_loop(c, total, inflight, unit)
    return total / seconds

def batched(c, total, size, inflight_batches):
    def unit(i):
        batch = uuid.uuid4().hex
        out = b""
        for n in range(1, size + 1):
            hdr = [("Nats-Batch-Id", batch), ("Nats-Batch-Sequence", str(n)), ("Nats-Msg-Id", uuid.uuid4().hex)]
            # Only the commit asks for an acknowledgement.
            reply = ""
            if n == size:
                hdr.append(("Nats-Batch-Commit", "1"))
                reply = f"_INBOX.x.b{i}"
            out += c.hpub("t.a", reply, hdr, PAYLOAD)
        return out
    batches = total // size
    seconds, ack = closed_loop(c, batches, inflight_batches, unit)
    return batches * size / seconds, ack

c = Conn()
print(c.request("$JS.API.STREAM.DELETE.T", b""))
cfg = {"name": "T", "subjects": ["t.>"], "storage": "file", "num_replicas": int(sys.argv[2]) if len(sys.argv) > 2 else 1,
       "allow_atomic": True, "duplicate_window": 120_000_000_000}
print(c.request("$JS.API.STREAM.CREATE.T", json.dumps(cfg).encode()).get("config", {}).get("allow_atomic"))
for inflight in (1, 100):
    print(f"single, {inflight} in flight: {single(c, 3000, inflight):.0f} msg/s")
for size, infl in ((10, 1), (10, 10), (50, 2), (100, 1), (100, 4)):
    rate, ack = batched(c, 6000, size, infl)
    print(f"atomic batches of {size}, {infl} in flight: {rate:.0f} msg/s  last ack {ack}")

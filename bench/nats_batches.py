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

def single(c, total, inflight):
    payload = b"x" * 100
    sent = acked = 0
    t0 = time.time()
    buf = b""
    while sent < min(inflight, total):
        buf += c.hpub("t.a", f"_INBOX.x.{sent}", [("Nats-Msg-Id", uuid.uuid4().hex)], payload); sent += 1
    c.s.sendall(buf)
    while acked < total:
        _, data = c.read_msg()
        ack = json.loads(data)
        assert "error" not in ack, ack
        acked += 1
        if sent < total:
            c.s.sendall(c.hpub("t.a", f"_INBOX.x.{sent}", [("Nats-Msg-Id", uuid.uuid4().hex)], payload)); sent += 1
    return total / (time.time() - t0)

def batched(c, total, size, inflight_batches):
    payload = b"x" * 100
    t0 = time.time()
    done = 0; started = 0; nb = total // size
    def one(bi):
        bid = uuid.uuid4().hex[:32]
        out = b""
        for i in range(1, size + 1):
            hdr = [("Nats-Batch-Id", bid), ("Nats-Batch-Sequence", str(i)), ("Nats-Msg-Id", uuid.uuid4().hex)]
            if i == size:
                hdr.append(("Nats-Batch-Commit", "1"))
                out += c.hpub("t.a", f"_INBOX.x.b{bi}", hdr, payload)
            else:
                out += c.hpub("t.a", "", hdr, payload)
        return out
    buf = b""
    while started < min(inflight_batches, nb):
        buf += one(started); started += 1
    c.s.sendall(buf)
    while done < nb:
        _, data = c.read_msg()
        ack = json.loads(data)
        assert "error" not in ack, ack
        done += 1
        if started < nb:
            c.s.sendall(one(started)); started += 1
    return nb * size / (time.time() - t0), ack

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

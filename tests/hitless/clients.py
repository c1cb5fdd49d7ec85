"""Real redis-py clients of every stateful kind, driven through the proxy by tests/hitless.rs
(and through HAProxy by benches/hitless.sh): pub/sub (RESP2: channel + pattern; RESP3: channel +
shard channel), a BRPOP consumer, a BLMOVE reliable queue, an XREADGROUP BLOCK consumer, a MULTI
left open across requests, a WATCH/MULTI retry loop, and the producers that feed them.

Usage: clients.py PORT. Each kind runs in its own thread on its own connection(s), with redis-py's
own retries off (so any error the proxy lets through is seen) and a socket timeout longer than
any failover hold. Commands on stdin, one per line:
  progress  print {"kind": operations done, ...} as one JSON line
  kill      what follows is the kill -9 phase (errors are counted apart)
  quiesce   hold the producers and wait until the consumers took everything and each is in its
            blocking call; print {"quiet": true|false, ...} (false: not within 10 s)
  resume    let the producers go on
  stop      stop producing, let consumers drain, print the report (one JSON line) and exit
A "reconnect" is a client whose socket changed (redis-py reconnects after an error).
"""

import json
import sys
import threading
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

PORT = int(sys.argv[1])
stopping = threading.Event()  # producers stop
drained = threading.Event()  # consumers stop (once they took everything)
held = threading.Event()  # producers wait (quiesce)
# Each consumer's flag is set just before it sends its blocking call and cleared when it returns:
# with the producers held and everything taken, all set means no consumer has a non-blocking
# request (an LREM, an XACK) in flight.
in_wait = {"bl": False, "rq": False, "st": False}
phase = ["planned"]
lock = threading.Lock()


def connect(protocol=2):
    return redis.Redis(
        host="127.0.0.1",
        port=PORT,
        protocol=protocol,
        socket_timeout=60,
        socket_connect_timeout=10,
        retry=Retry(NoBackoff(), 0),
        single_connection_client=True,
    )


def sockname(conn):
    sock = getattr(conn, "_sock", None)
    try:
        return sock.getsockname() if sock is not None else None
    except OSError:
        return None


class Kind:
    """What one kind of client saw."""

    def __init__(self, name):
        self.name = name
        self.ops = 0
        self.errors = {"planned": [], "kill": []}
        self.reconnects = {"planned": 0, "kill": 0}
        self.acked = []
        self.received = {}
        self.notes = {}
        self._socks = {}

    def error(self, e):
        with lock:
            self.errors[phase[0]].append(f"{type(e).__name__}: {e}"[:200])

    def watch_socket(self, key, conn):
        """Count a reconnect when `conn`'s socket is not the one it had."""
        now = sockname(conn)
        if now is None:
            return
        before = self._socks.get(key)
        if before is not None and before != now:
            with lock:
                self.reconnects[phase[0]] += 1
        self._socks[key] = now

    def got(self, key, value):
        k = (key, value)
        self.received[k] = self.received.get(k, 0) + 1

    def report(self, expected):
        """expected: (key, value) pairs that must each have been received exactly once."""
        lost = [k for k in expected if self.received.get(k, 0) == 0]
        dup = [k for k, n in self.received.items() if n > 1]
        return {
            "ops": self.ops,
            "errors_planned": len(self.errors["planned"]),
            "errors_kill": len(self.errors["kill"]),
            "first_errors": (self.errors["planned"] + self.errors["kill"])[:5],
            "reconnects_planned": self.reconnects["planned"],
            "reconnects_kill": self.reconnects["kill"],
            "expected": len(expected),
            "lost": len(lost),
            "lost_sample": [list(map(str, k)) for k in lost[:5]],
            "duplicated": len(dup),
            **self.notes,
        }


kinds = {
    n: Kind(n)
    for n in ["pubsub", "publisher", "blocking", "blmove", "stream", "producers", "multi", "watch"]
}
producers = kinds["producers"]


def guarded(kind, body, until=stopping):
    def run():
        while not until.is_set():
            try:
                if body() is False:
                    return
            except Exception as e:  # noqa: BLE001 - every error is a finding
                kind.error(e)
                time.sleep(0.05)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# ---- pub/sub: a RESP2 subscriber (channel + pattern), a RESP3 one (channel + shard channel) ----
ps = kinds["pubsub"]
sub2_client, sub3_client = connect(2), connect(3)
sub2 = sub2_client.pubsub(ignore_subscribe_messages=True)
sub2.subscribe("hl:chan")
sub2.psubscribe("hl:pat:*")
sub3 = sub3_client.pubsub(ignore_subscribe_messages=True)
sub3.subscribe("hl:chan")
sub3.ssubscribe("hl:shard")
subs_done = {"sub2": False, "sub3": False}


def subscriber(name, p):
    def body():
        m = p.get_message(timeout=0.5)
        if p.connection is not None:
            ps.watch_socket(name, p.connection)
        if m is None:
            return None
        kind = m["type"]
        if kind in ("message", "pmessage", "smessage"):
            ps.got(f"{name}:{kind}", int(m["data"]))
            ps.ops += 1
        return None

    def run():
        while True:
            try:
                body()
            except Exception as e:  # noqa: BLE001
                ps.error(e)
                time.sleep(0.05)
            if stopping.is_set() and subs_done[name]:
                return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


pub = connect(2)
pub_seq = [0]
publ = kinds["publisher"]


def publisher():
    if stopping.is_set():
        return False
    seq = pub_seq[0] + 1
    pub_seq[0] = seq
    n_chan = pub.publish("hl:chan", seq)
    n_pat = pub.publish("hl:pat:x", seq)
    n_shard = pub.execute_command("SPUBLISH", "hl:shard", seq)
    publ.watch_socket("pub", pub.connection)
    ps.acked.append((seq, n_chan, n_pat, n_shard))
    publ.ops += 1
    time.sleep(0.01)


def producer(name, conn, push, kind):
    """A producer loop body: push the next sequence number, count it acknowledged for `kind`."""
    seq = [0]

    def body():
        if stopping.is_set():
            return False
        if held.is_set():
            time.sleep(0.01)
            return None
        seq[0] += 1
        push(seq[0])
        producers.watch_socket(name, conn.connection)
        producers.ops += 1
        kind.acked.append(seq[0])
        time.sleep(0.01)

    return body


# ---- blocking pops: BRPOP consumer, LPUSH producer ----
bl = kinds["blocking"]
bl_prod, bl_cons = connect(), connect()
bl_producer = producer("bl", bl_prod, lambda seq: bl_prod.lpush("hl:jobs", seq), bl)


def bl_consumer():
    in_wait["bl"] = True
    try:
        r = bl_cons.brpop(["hl:jobs"], timeout=1)
    finally:
        in_wait["bl"] = False
    bl.watch_socket("cons", bl_cons.connection)
    if r is not None:
        bl.got("jobs", int(r[1]))
        bl.ops += 1


# ---- a reliable queue: BLMOVE into a processing list, LREM when done ----
rq = kinds["blmove"]
rq_prod, rq_cons = connect(), connect()
rq_producer = producer("rq", rq_prod, lambda seq: rq_prod.lpush("hl:rq", seq), rq)


def rq_consumer():
    in_wait["rq"] = True
    try:
        v = rq_cons.blmove("hl:rq", "hl:rq:processing", 1, "RIGHT", "LEFT")
    finally:
        in_wait["rq"] = False
    rq.watch_socket("cons", rq_cons.connection)
    if v is not None:
        rq.got("rq", int(v))
        rq_cons.lrem("hl:rq:processing", 1, v)
        rq.ops += 1


# ---- a stream consumer group: XREADGROUP BLOCK, XACK ----
st = kinds["stream"]
st_prod, st_cons = connect(), connect()
st_prod.execute_command("XGROUP", "CREATE", "hl:stream", "g", "$", "MKSTREAM")
st_producer = producer("st", st_prod, lambda seq: st_prod.xadd("hl:stream", {"n": seq}), st)


def st_consumer():
    in_wait["st"] = True
    try:
        r = st_cons.xreadgroup("g", "c", {"hl:stream": ">"}, count=10, block=1000)
    finally:
        in_wait["st"] = False
    st.watch_socket("cons", st_cons.connection)
    for _, entries in r or []:
        for entry_id, fields in entries:
            st.got("stream", int(fields[b"n"]))
            st_cons.xack("hl:stream", "g", entry_id)
            st.ops += 1


# ---- MULTI left open across requests (so a switch can fall inside it) ----
mt = kinds["multi"]
mt_conn = connect()
mt_seq = [0]
mt_unknown = []


def multi_writer():
    if stopping.is_set():
        return False
    seq = mt_seq[0] + 1
    mt_seq[0] = seq
    try:
        mt_conn.execute_command("MULTI")
        mt_conn.execute_command("INCR", "hl:txn")
        time.sleep(0.02)
        mt_conn.execute_command("RPUSH", "hl:txlog", seq)
        r = mt_conn.execute_command("EXEC")
    except Exception:
        mt_unknown.append(seq)  # its outcome is unknown
        raise
    finally:
        mt.watch_socket("conn", mt_conn.connection)
    if isinstance(r, list) and len(r) == 2:
        mt.acked.append(seq)
        mt.ops += 1


# ---- WATCH / MULTI / EXEC optimistic retry loop ----
wt = kinds["watch"]
wt_conn = connect()
wt_seq = [0]
wt_unknown = []
wt.notes["aborted_exec"] = 0


def watch_writer():
    if stopping.is_set():
        return False
    seq = wt_seq[0] + 1
    wt_seq[0] = seq
    while True:
        try:
            wt_conn.execute_command("WATCH", "hl:w")
            v = int(wt_conn.execute_command("GET", "hl:w") or 0)
            time.sleep(0.01)
            wt_conn.execute_command("MULTI")
            wt_conn.execute_command("SET", "hl:w", v + 1)
            wt_conn.execute_command("RPUSH", "hl:wlog", seq)
            r = wt_conn.execute_command("EXEC")
        except Exception:
            wt_unknown.append(seq)
            raise
        finally:
            wt.watch_socket("conn", wt_conn.connection)
        if r is None:
            wt.notes["aborted_exec"] += 1  # a watched key changed: the loop retries
            continue
        wt.acked.append(seq)
        wt.ops += 1
        return None


threads = [
    subscriber("sub2", sub2),
    subscriber("sub3", sub3),
    guarded(publ, publisher),
    guarded(producers, bl_producer),
    guarded(bl, bl_consumer, until=drained),
    guarded(producers, rq_producer),
    guarded(producers, st_producer),
    guarded(st, st_consumer, until=drained),
    guarded(rq, rq_consumer, until=drained),
    guarded(mt, multi_writer),
    guarded(wt, watch_writer),
]


def drain(limit=15):
    """After the producers stop: wait until the consumers took everything acknowledged."""
    deadline = time.time() + limit
    while time.time() < deadline:
        done = (
            all(bl.received.get(("jobs", s)) for s in bl.acked)
            and all(rq.received.get(("rq", s)) for s in rq.acked)
            and all(st.received.get(("stream", s)) for s in st.acked)
            and all(
                ps.received.get((k, s))
                for (s, _, _, _) in ps.acked
                for k in ("sub2:message", "sub2:pmessage", "sub3:message", "sub3:smessage")
            )
        )
        if done:
            return
        time.sleep(0.1)


def consumers_caught_up():
    return (
        all(bl.received.get(("jobs", s)) for s in list(bl.acked))
        and all(rq.received.get(("rq", s)) for s in list(rq.acked))
        and all(st.received.get(("stream", s)) for s in list(st.acked))
    )


def quiesce(limit=10):
    """Hold the producers; wait until the consumers took all and wait in their blocking calls
    (seen twice, 50 ms apart, so a consumer between its item and its LREM/XACK is not missed)."""
    held.set()
    deadline = time.time() + limit
    calm = 0
    while time.time() < deadline:
        calm = calm + 1 if consumers_caught_up() and all(in_wait.values()) else 0
        if calm >= 2:
            return {"quiet": True}
        time.sleep(0.05)
    return {"quiet": False, "in_wait": dict(in_wait), "caught_up": consumers_caught_up()}


def report():
    check = connect()
    out = {}
    expected_ps = []
    short = 0
    for seq, n_chan, n_pat, n_shard in ps.acked:
        if (n_chan, n_pat, n_shard) != (2, 1, 1):
            short += 1
        for k in ("sub2:message", "sub2:pmessage", "sub3:message", "sub3:smessage"):
            expected_ps.append((k, seq))
    ps.notes["published_to_fewer_subscribers"] = short
    out["pubsub"] = ps.report(expected_ps)
    out["blocking"] = bl.report([("jobs", s) for s in bl.acked])
    out["blocking"]["left_in_list"] = check.llen("hl:jobs")
    out["blmove"] = rq.report([("rq", s) for s in rq.acked])
    out["blmove"]["left_processing"] = check.llen("hl:rq:processing")
    out["stream"] = st.report([("stream", s) for s in st.acked])
    out["stream"]["pending"] = check.xpending("hl:stream", "g")["pending"]
    out["publisher"] = publ.report([])
    out["producers"] = producers.report([])
    for kind, key, log, unknown in (
        (mt, "hl:txn", "hl:txlog", mt_unknown),
        (wt, "hl:w", "hl:wlog", wt_unknown),
    ):
        for v in check.lrange(log, 0, -1):
            kind.got("log", int(v))
        r = kind.report([("log", s) for s in kind.acked])
        # A transaction whose EXEC got an error may or may not have run (kill -9 only).
        extra = [s for (_, s) in kind.received if s not in set(kind.acked)]
        r["applied_unacknowledged"] = len([s for s in extra if s not in unknown])
        r["counter"] = int(check.get(key) or 0)
        r["counter_matches_log"] = r["counter"] == sum(kind.received.values())
        out[kind.name] = r
    return out


for line in sys.stdin:
    cmd = line.strip()
    if cmd == "progress":
        print(json.dumps({k: v.ops for k, v in kinds.items()}), flush=True)
    elif cmd == "kill":
        phase[0] = "kill"
    elif cmd == "quiesce":
        print(json.dumps(quiesce()), flush=True)
    elif cmd == "resume":
        held.clear()
    elif cmd == "stop":
        break

stopping.set()
drain()
drained.set()
subs_done["sub2"] = subs_done["sub3"] = True
time.sleep(0.6)
print(json.dumps(report()), flush=True)

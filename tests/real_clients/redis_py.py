"""redis-py clients configured as applications configure them, all at once, through the proxy:
RESP3, a password, db 1, a client name, and what they do all day (plain commands, a pipelined transaction, an
optimistic WATCH transaction, a hash read back as a RESP3 map, a blocking pop that finds its
item, a registered Lua script (EVALSHA, loaded again by redis-py where the server says
NOSCRIPT)). Usage: redis_py.py PORT PASSWORD CLIENTS ROUNDS SECONDS TAG: each client runs ROUNDS
rounds and for at least SECONDS; keys are named after TAG. Prints one JSON line: ops, errors."""

import json
import sys
import threading
import time

import redis

port, password, clients, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
seconds, tag = float(sys.argv[5]), sys.argv[6]
errors = []
ops = [0] * clients
start = threading.Barrier(clients)


def worker(i):
    try:
        r = redis.Redis(
            host="127.0.0.1",
            port=port,
            password=password,
            db=1,
            protocol=3,
            client_name=f"py-{tag}-{i}",
            decode_responses=True,
            single_connection_client=True,
            socket_timeout=30,
        )
        add = r.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        start.wait()
        assert r.client_getname() == f"py-{tag}-{i}"
        until = time.monotonic() + seconds
        r.ping()
        j = 0
        while j < rounds or time.monotonic() < until:
            key = f"py:{tag}:{i}:{j}"
            r.set(key, j)
            assert r.get(key) == str(j), key
            p = r.pipeline(transaction=True)
            p.incr(f"py:{tag}:count:{i}")
            p.incr(f"py:{tag}:count:{i}")
            assert p.execute() == [2 * j + 1, 2 * j + 2]

            def bump(pipe):
                value = int(pipe.get(f"py:{tag}:watched:{i}") or 0)
                pipe.multi()
                pipe.set(f"py:{tag}:watched:{i}", value + 1)

            r.transaction(bump, f"py:{tag}:watched:{i}")
            r.hset(f"py:{tag}:hash:{i}", mapping={"a": "1", "b": "2"})
            assert r.hgetall(f"py:{tag}:hash:{i}") == {"a": "1", "b": "2"}
            r.rpush(f"py:{tag}:list:{i}", "item")
            assert r.blpop([f"py:{tag}:list:{i}"], timeout=5) == [f"py:{tag}:list:{i}", "item"]
            assert add(keys=[f"py:{tag}:script:{i}"], args=[2]) == 2 * (j + 1)
            ops[i] += 1
            j += 1
        assert int(r.get(f"py:{tag}:watched:{i}")) == j
        r.close()
    except Exception as e:  # every failure is reported, none ends the run
        errors.append(f"client {i}: {type(e).__name__}: {e}")


threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"ops": sum(ops), "errors": errors[:5], "error_count": len(errors)}))

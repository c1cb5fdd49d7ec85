"""redis-py's Sentinel support pointed at the proxy's Sentinel face, as an application configured
for Sentinel runs it: Sentinel([...]).master_for(NAME), then an INCR every few milliseconds until
STOP_FILE exists. Usage: redis_py.py FACE_PORT PROXY_PORT STOP_FILE. Prints one JSON line: what
discover_master named, the INCRs acknowledged, the errors."""

import json
import os
import sys
import time

from redis.sentinel import Sentinel

face, proxy, stop = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
sentinel = Sentinel([("127.0.0.1", face)], socket_timeout=5)
named = sentinel.discover_master("mymaster")
master = sentinel.master_for("mymaster", socket_timeout=5)
errors, acked, last = [], 0, 0
while not os.path.exists(stop):
    try:
        value = master.incr("face:redis-py")
        if value <= last:
            errors.append(f"INCR went back: {value} after {last}")
        last, acked = value, acked + 1
    except Exception as e:  # every error an application would see
        errors.append(f"{type(e).__name__}: {e}")
    time.sleep(0.005)
print(json.dumps({"named": list(named), "acked": acked, "last": last,
                  "errors": errors[:5], "error_count": len(errors)}))

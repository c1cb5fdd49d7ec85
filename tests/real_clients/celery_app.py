"""A Celery worker and producer through the proxy, as an application runs them: broker and
result backend on Redis (the backend in db 1), a worker process with a few threads, the producer
sending a task every few milliseconds for at least SECONDS and then waiting for every result.
Usage: PROXY_PORT=PORT celery_app.py TASKS SECONDS (the worker imports this module, so the port
comes from the environment). With SENTINEL_FACE_PORT, broker and backend are `sentinel://` URLs
to the proxy's Sentinel face (master `mymaster`); with STOP_FILE, the producer sends until that
file exists (and at least TASKS). Prints one JSON line: sent, done, lost, errors."""

import json
import os
import subprocess
import sys
import time

from celery import Celery

port = int(os.environ["PROXY_PORT"])
face = os.environ.get("SENTINEL_FACE_PORT")
scheme, at = ("sentinel", face) if face else ("redis", port)
app = Celery("proxytest", broker=f"{scheme}://127.0.0.1:{at}/0",
             backend=f"{scheme}://127.0.0.1:{at}/1")
app.conf.update(
    broker_connection_retry_on_startup=True,
    result_expires=600,
    task_default_queue=f"proxytest-{port}",
    worker_hijack_root_logger=False,
)
if face:
    app.conf.update(broker_transport_options={"master_name": "mymaster"},
                    result_backend_transport_options={"master_name": "mymaster"})


@app.task(name="proxytest.square")
def square(x):
    return x * x


if __name__ == "__main__":
    tasks, seconds = int(sys.argv[1]), float(sys.argv[2])
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool=threads",
         "--concurrency=4", "--without-mingle", "--without-gossip", "--without-heartbeat",
         "--loglevel=WARNING", "-Q", f"proxytest-{port}"],
        cwd=sys.path[0],
    )
    errors = []
    results = []
    try:
        until = time.monotonic() + seconds
        stop = os.environ.get("STOP_FILE")
        going = (lambda: not os.path.exists(stop)) if stop else (lambda: time.monotonic() < until)
        i = 0
        while i < tasks or going():
            try:
                results.append((i, square.delay(i)))
            except Exception as e:  # a send that failed: reported, never retried silently
                errors.append(f"send {i}: {type(e).__name__}: {e}")
            i += 1
            time.sleep(0.005)
        done = lost = 0
        for i, r in results:
            try:
                if r.get(timeout=60) == i * i:
                    done += 1
                else:
                    errors.append(f"task {i}: wrong result")
            except Exception as e:
                lost += 1
                errors.append(f"task {i}: {type(e).__name__}: {e}")
    finally:
        worker.terminate()
        worker.wait(30)
    print(json.dumps({"sent": len(results), "done": done, "lost": lost,
                      "errors": errors[:5], "error_count": len(errors)}))

"""A FastAPI service with workers for the end-to-end tests, failing on demand the way real ones do.

Run it the way users do, from the directory it is in, with the pinned packages that
`cargo xtask test` installs in the machine (PYTHONPATH=/opt/detector-py, PYTHONUNBUFFERED=1):

    python3 -m uvicorn fastapi_app:app --host 127.0.0.1 --port 8000 --workers 4
    python3 -m gunicorn -w 4 -k uvicorn.workers.UvicornWorker -b 127.0.0.1:8000 fastapi_app:app

Every worker imports this module itself, so what fails here fails in every worker, each under
its own pid in the journal.

DEMO_MODE (default ok):
  ok        serve.
  import    a module missing after a deploy: ModuleNotFoundError at import.
  env       a required variable is unset: KeyError 'DATABASE_URL' at import.
  lifespan  the startup handler raises (uvicorn: "Application startup failed. Exiting.").
DEMO_HANG_FILE (default /run/demo-hang): while this file exists, every worker's event loop
  blocks for an hour (each worker checks every 100 ms): requests time out, while uvicorn's
  ping to its workers, answered by a thread of their own, still passes. Removing the file does
  not wake a blocked worker; a new worker hangs as soon as it has started.

GET /health  200 "ok"
GET /pid     the worker's pid (every response also says it in X-Worker-Pid)
GET /hang    creates DEMO_HANG_FILE: every worker hangs within 100 ms
GET /hog     the worker serving it allocates (and touches) 1 MiB every 10 ms, forever, on a
             thread, so it still answers until a memory limit kills it
"""

import asyncio
import contextlib
import os
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

MODE = os.environ.get("DEMO_MODE", "ok")
HANG_FILE = os.environ.get("DEMO_HANG_FILE", "/run/demo-hang")
print(f"fastapi_app: worker {os.getpid()} importing, mode={MODE}", flush=True)

if MODE == "import":
    import fastapi_settings_plugin  # noqa: F401  (not installed: ModuleNotFoundError)
if MODE == "env":
    DATABASE_URL = os.environ["DATABASE_URL"]


async def watch_for_hang():
    """Blocks this worker's event loop (the thread serving requests) once HANG_FILE exists."""
    while not os.path.exists(HANG_FILE):
        await asyncio.sleep(0.1)
    print(f"fastapi_app: worker {os.getpid()} hanging: event loop blocked", flush=True)
    time.sleep(3600)


@contextlib.asynccontextmanager
async def lifespan(_app):
    if MODE == "lifespan":
        raise RuntimeError("startup hook failed: cannot connect to the database")
    watcher = asyncio.create_task(watch_for_hang())
    print(f"fastapi_app: worker {os.getpid()} ready", flush=True)
    yield
    watcher.cancel()


app = FastAPI(lifespan=lifespan)


@app.middleware("http")
async def worker_pid(request: Request, call_next):
    response = await call_next(request)
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response


@app.get("/health")
def health():
    return PlainTextResponse("ok")


@app.get("/pid")
def pid():
    return PlainTextResponse(f"{os.getpid()}")


@app.get("/hang")
def hang():
    with open(HANG_FILE, "w"):
        pass
    return PlainTextResponse(f"hanging every worker ({HANG_FILE})")


def allocate_forever():
    hoard = []
    while True:
        hoard.append(b"x" * (1 << 20))  # a new, filled 1 MiB: resident at once
        time.sleep(0.01)


@app.get("/hog")
def hog():
    print(f"fastapi_app: worker {os.getpid()} allocating 1 MiB every 10 ms", flush=True)
    threading.Thread(target=allocate_forever, daemon=True).start()
    return PlainTextResponse(f"{os.getpid()} hogging")

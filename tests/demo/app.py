"""A small HTTP service for the end-to-end tests, failing on demand the way real services do.

DEMO_MODE: ok (serve), import (a module missing after a deploy), exception (a startup hook
raises), env (a required environment variable is unset), segv (a native crash), hog (serve,
and allocate 1 MiB every 20 ms until stopped: for OOM tests).
DEMO_PORT: the port to listen on (default 8000); a second service on a taken port fails to bind.
DEMO_FAIL_ONCE: a file; when set, only the run that creates it fails in DEMO_MODE, and the runs
after it serve: a transient failure that a restart cures.
DEMO_STARTUP_DELAY: seconds to spend starting up before anything else (default 0).
GET /health answers 200.
"""

import http.server
import os
import sys
import time

mode = os.environ.get("DEMO_MODE", "ok")
once = os.environ.get("DEMO_FAIL_ONCE")
if once:
    try:
        open(once, "x").close()
    except FileExistsError:
        mode = "ok"
print(f"demo starting, mode={mode}", flush=True)

time.sleep(float(os.environ.get("DEMO_STARTUP_DELAY", "0")))

if mode == "import":
    import fastapi_settings_plugin  # noqa: F401  (not installed: ModuleNotFoundError)
if mode == "exception":
    raise RuntimeError("startup hook failed: cannot load settings")
if mode == "env":
    database = os.environ["DATABASE_URL"]
if mode == "segv":
    import ctypes

    ctypes.string_at(0)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, *args):
        pass


port = int(os.environ.get("DEMO_PORT", "8000"))
print(f"binding 127.0.0.1:{port}", flush=True)
server = http.server.HTTPServer(("127.0.0.1", port), Handler)
print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
if mode == "hog":
    import threading

    def hog():
        hoard = []
        while True:
            hoard.append(bytearray(b"x" * (1 << 20)))
            time.sleep(0.02)

    threading.Thread(target=hog, daemon=True).start()
server.serve_forever()

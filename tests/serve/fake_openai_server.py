"""A stand-in peer server for the bench-serve --peer tests: stdlib only, no model.

GET /v1/models answers 200; POST /v1/completions streams max_tokens one-word chunks as SSE (like
llama.cpp's server: no usage unless --usage), honours `min_tokens` or `ignore_eos` by always producing
exactly max_tokens. --exit-at-start N exits with status N before listening (a peer that fails to start);
--child starts a sleeping child process in the same process group (like vLLM's engine core), so a test
can check that stopping the peer stops the whole group.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--usage", action="store_true")
    ap.add_argument("--exit-at-start", type=int, default=None)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--no-done", action="store_true", help="end each stream without [DONE] (a broken stream)")
    ap.add_argument("--tag", default="", help="carried on the child's command line, for tests that look for it")
    ap.add_argument("--delay", type=float, default=0.002, help="seconds per streamed token")
    args = ap.parse_args()
    if args.exit_at_start is not None:
        print("fake peer: refusing to start (as asked)", file=sys.stderr, flush=True)
        sys.exit(args.exit_at_start)
    if args.child:
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", args.tag])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):  # quiet
            pass

        def do_GET(self):
            body = json.dumps({"object": "list", "data": [{"id": "bench", "object": "model"}]}).encode()
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            n = int(req.get("max_tokens", 16))
            for i in range(n):
                time.sleep(args.delay)
                chunk = {"object": "text_completion", "choices": [{"index": 0, "text": f" w{i}", "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            if args.usage:
                u = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}}
                self.wfile.write(f"data: {json.dumps(u)}\n\n".encode())
            if not args.no_done:
                self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()

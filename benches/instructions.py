#!/usr/bin/env python3
"""Instructions per run: the real `portbot serve` under valgrind's callgrind, driven over loopback.

The throughput benches on this 2-core VM swing by 20 % within minutes, so two builds that
differ by 5 % cannot be told apart there. Instruction counts can: the same binary and load give
the same count to within about 1 % (`api` moved 322.5k / 325.2k between two runs on 2026-12-02:
how many of a run's writes share one of the store's drain windows varies). This is how to compare builds and find where a run's work
goes; the throughput benches stay the measure of the targets.

    python3 benches/instructions.py [--binary PATH] [--runs N] [--clients C] [--keep] MODE

MODE
    api      `POST /v1/actions/bench-noop/runs` (a WEBHOOK action, like `api_runs`), until each
             run's webhook reached the receiver in this script;
    complete the same, each run then completed with `PATCH ... {"status": "SUCCESS"}`;
    slack    signed `/port add-documentdb mailer instances=2` slash commands (like
             `slack_commands`), until portbot's outbox went quiet at the fake Slack Web API here.

The counters are zeroed after a warm-up of 64 runs and dumped after the load, so start-up is
not counted. It prints one JSON line: runs, instructions per run, and the callgrind file
(`callgrind_annotate --inclusive=yes FILE` shows where they went). Kernel time is not counted,
and valgrind hides the CPU's SHA extensions, so SHA-256 (signatures, tokens) counts several
times what it costs natively. Needs valgrind (`apt-get install valgrind`).
"""
import argparse
import glob
import hashlib
import hmac
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLACK_SECRET = "bench-signing-secret"
SLACK_USER = "UBENCH"
WARM_UP = 64


class Counter:
    def __init__(self):
        self.value = 0
        self.lock = threading.Lock()

    def add(self):
        with self.lock:
            self.value += 1


def fake_server(counter, answer):
    """A loopback HTTP server that counts POSTs and answers each with `answer` (JSON)."""
    body = json.dumps(answer).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            counter.add()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deployment(tmp, hook_port, slack_port):
    """The catalog of `api_runs` (the shipped one plus `bench-noop`) and, for Slack, a config."""
    catalog = os.path.join(tmp, "catalog")
    for part in ["blueprints", "entities", "actions"]:
        shutil.copytree(os.path.join(ROOT, "config/catalog", part), os.path.join(catalog, part))
    action = {
        "identifier": "bench-noop",
        "title": "Benchmark no-op",
        "trigger": {"type": "self-service", "operation": "CREATE", "blueprintIdentifier": "Component",
                    "userInputs": {"properties": {"n": {"type": "number", "minimum": 0}}, "required": []}},
        "invocationMethod": {"type": "WEBHOOK", "url": f"http://127.0.0.1:{hook_port}/hook"},
        "requiredApproval": False,
    }
    with open(os.path.join(catalog, "actions/bench-noop.json"), "w") as f:
        json.dump(action, f)
    config = os.path.join(tmp, "bench.toml")
    with open(config, "w") as f:
        f.write(f"""[slack]
enabled = true
signing_secret = "{SLACK_SECRET}"
bot_token = "xoxb-bench"
api_url = "http://127.0.0.1:{slack_port}/api/"

[[teams]]
identifier = "developers"
users = ["dev@example.com"]
slack_users = ["{SLACK_USER}"]

[[teams]]
identifier = "devops"
users = ["ops@example.com"]
""")
    return catalog, config


def slash_command(n):
    body = urllib.parse.urlencode({
        "team_id": "T1", "channel_id": f"C{n:08}", "user_id": SLACK_USER, "command": "/port",
        "text": "add-documentdb mailer instances=2", "api_app_id": "A1",
        "response_url": f"https://hooks.slack.invalid/commands/T1/{n}/bench",
        "trigger_id": f"{n}.1.b3nch{n:016x}",
    })
    timestamp = str(int(time.time()))
    mac = hmac.new(SLACK_SECRET.encode(), f"v0:{timestamp}:{body}".encode(), hashlib.sha256)
    return body, {"content-type": "application/x-www-form-urlencoded",
                  "x-slack-request-timestamp": timestamp, "x-slack-signature": "v0=" + mac.hexdigest()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["api", "complete", "slack"])
    parser.add_argument("--binary", default=os.path.join(ROOT, "target/release/portbot"))
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")

    hooks, slack_calls = Counter(), Counter()
    hook_port = fake_server(hooks, {})
    slack_port = fake_server(slack_calls, {"ok": True, "ts": "1.000100", "channel": "C1"})
    tmp = tempfile.mkdtemp(prefix="portbot-instructions-")
    catalog, config = deployment(tmp, hook_port, slack_port)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and k != "PORTBOT_CONFIG"}
    env.update({"PORTBOT__STORAGE__PATH": os.path.join(tmp, "db"), "PORTBOT__SERVER__BIND": f"127.0.0.1:{port}",
                "PORTBOT__SERVER__PUBLIC_URL": f"http://127.0.0.1:{port}", "PORTBOT__CATALOG__PATH": catalog,
                "RUST_LOG": "warn", "NO_PROXY": "*", "no_proxy": "*"})
    if args.mode == "slack":
        env["PORTBOT_CONFIG"] = config
        # Every command's messages are counted, so they go out as fast as the channels allow,
        # not at the workspace-wide budget's ten a second.
        env["PORTBOT__SLACK__MESSAGES_PER_MINUTE"] = "0"
    out = os.path.join(tmp, "callgrind.out")
    with open(os.path.join(tmp, "server.log"), "w") as log:
        server = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", args.binary, "serve"],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)

    def connect():
        return http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    for _ in range(1200):
        try:
            c = connect()
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.1)
    else:
        raise SystemExit(f"portbot did not start; see {tmp}/server.log")

    c = connect()
    c.request("POST", "/v1/auth/access_token",
              json.dumps({"clientId": "portbot-cli", "clientSecret": "portbot-demo-secret-change-me"}),
              {"content-type": "application/json"})
    auth = {"authorization": "Bearer " + json.loads(c.getresponse().read())["accessToken"],
            "content-type": "application/json"}
    numbers = iter(range(10**9))
    numbers_lock = threading.Lock()

    def one(c):
        if args.mode == "slack":
            with numbers_lock:
                n = next(numbers)
            body, headers = slash_command(n)
            c.request("POST", "/slack/commands", body, headers)
            reply = c.getresponse()
            text = reply.read()
            assert reply.status == 200 and b"WAITING_FOR_APPROVAL" in text, (reply.status, text[:300])
            return
        c.request("POST", "/v1/actions/bench-noop/runs", '{"properties":{"n":1}}', auth)
        reply = c.getresponse()
        text = reply.read()
        assert reply.status in (200, 201, 202), (reply.status, text[:300])
        if args.mode == "complete":
            run = json.loads(text)["run"]["id"]
            c.request("PATCH", f"/v1/actions/runs/{run}", '{"status":"SUCCESS"}', auth)
            reply = c.getresponse()
            reply.read()
            assert reply.status == 200, reply.status

    def load(total):
        """Sends about `total` runs from `--clients` keep-alive connections; returns how many."""
        per_client = max(total // args.clients, 1)

        def client():
            c = connect()
            for _ in range(per_client):
                one(c)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return per_client * args.clients

    def settle(expected_hooks):
        """Waits for every run's webhook (`api`), or for the webhooks (`complete`: a run
        completed first gets none) or Slack calls to stop coming for 5 s."""
        deadline = time.time() + 1800
        counter = slack_calls if args.mode == "slack" else hooks
        last, quiet_since = -1, time.time()
        while time.time() < deadline:
            if args.mode == "api" and hooks.value >= expected_hooks:
                return
            if counter.value != last:
                last, quiet_since = counter.value, time.time()
            elif args.mode != "api" and time.time() - quiet_since > 5:
                return
            time.sleep(0.2)
        raise SystemExit("portbot did not finish the work in 30 minutes")

    warmed = load(WARM_UP)
    settle(warmed)
    time.sleep(2)
    subprocess.run(["callgrind_control", "--zero", str(server.pid)], check=True, stdout=subprocess.DEVNULL)
    calls_before = slack_calls.value
    runs = load(args.runs)
    settle(warmed + runs)
    time.sleep(2)
    subprocess.run(["callgrind_control", "--dump", str(server.pid)], check=True, stdout=subprocess.DEVNULL)
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=300)
    dump = [f for f in glob.glob(out + ".*") if f.endswith(".1")][0]
    with open(dump) as f:
        total = next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:")))
    print(json.dumps({"mode": args.mode, "binary": args.binary, "runs": runs,
                      "instructions_per_run": total // runs,
                      "slack_calls_per_run": round((slack_calls.value - calls_before) / runs, 2),
                      "callgrind_file": dump if args.keep else None}))
    if not args.keep:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()

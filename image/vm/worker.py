"""The VM harness's client of the worker's HTTP API (docs/api.md): /hello, tasks, and
the SSE event stream with Last-Event-ID. Every call has a timeout. Standard library only.
"""

import http.client
import json
import time
import urllib.parse


class ApiError(Exception):
    pass


class Worker:
    def __init__(self, url, token):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port
        self.token = token

    def _conn(self, timeout):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, timeout=15, headers=None):
        conn = self._conn(timeout)
        try:
            h = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
            h.update(headers or {})
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                h["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            text = r.read().decode("utf-8", "replace")
            return r.status, text
        except (OSError, http.client.HTTPException) as e:
            raise ApiError(f"{method} {path}: {e}") from e
        finally:
            conn.close()

    def json(self, method, path, body=None, timeout=15, expect=(200, 202)):
        status, text = self.request(method, path, body, timeout)
        if status not in expect:
            raise ApiError(f"{method} {path}: {status} {text[:300]}")
        return json.loads(text)

    def hello(self, timeout=10):
        return self.json("GET", "/hello", timeout=timeout)

    def start(self, **body):
        return self.json("POST", "/work", body)

    def task(self, task_id, timeout=15):
        return self.json("GET", f"/work/{task_id}", timeout=timeout)

    def log(self, task_id, timeout=30):
        status, text = self.request("GET", f"/work/{task_id}/log", timeout=timeout)
        if status != 200:
            raise ApiError(f"GET /work/{task_id}/log: {status} {text[:300]}")
        return text

    def wait_terminal(self, task_id, timeout_s, every=None):
        """Polls the task until it is terminal; `every(hello_or_None)` runs each round
        with /hello (None when /hello did not answer in time)."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            if every is not None:
                try:
                    every(self.hello(timeout=5))
                except (ApiError, ValueError):
                    every(None)
            try:
                last = self.task(task_id, timeout=10)
                if last["status"] in ("done", "failed", "cancelled", "interrupted"):
                    return last
            except (ApiError, ValueError):
                pass
            time.sleep(0.5)
        raise ApiError(f"task {task_id} not finished after {timeout_s} s (last seen: "
                       f"{last and last.get('status')})")

    def events(self, task_id, last_event_id=None, timeout=30):
        """The task's SSE events as dicts {id, event, data}, in order, until the stream
        ends; raises ApiError when nothing arrives for `timeout` s."""
        conn = self._conn(timeout)
        h = {"Authorization": f"Bearer {self.token}", "Accept": "text/event-stream"}
        if last_event_id is not None:
            h["Last-Event-ID"] = str(last_event_id)
        try:
            conn.request("GET", f"/work/{task_id}/events", headers=h)
            r = conn.getresponse()
            if r.status != 200:
                raise ApiError(f"GET /work/{task_id}/events: {r.status} {r.read()[:300]!r}")
            ev = {}
            while True:
                line = r.readline()
                if not line:
                    return
                line = line.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    if "data" in ev:
                        yield ev
                    ev = {}
                    continue
                if line.startswith(":"):
                    continue
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "id":
                    ev["id"] = int(value)
                elif field == "event":
                    ev["event"] = value
                elif field == "data":
                    ev["data"] = ev.get("data", "") + value
        except (OSError, http.client.HTTPException) as e:
            raise ApiError(f"events of {task_id}: {e}") from e
        finally:
            conn.close()

"""A git server on the host's 127.0.0.1 for the VM harness: the real `git http-backend`
(the git CLI's own smart-HTTP server) behind a small CGI bridge, serving bare
repositories in a temp dir; the guest reaches it as http://10.0.2.2:<port>/<name>.git.
Handles chunked request bodies (libgit2 sends its pushes chunked). Standard library only.
"""

import http.server
import os
import shutil
import subprocess
import tempfile
import threading


def git(*args, cwd=None):
    out = subprocess.run(["git", *args], cwd=cwd, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


class GitServer:
    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="outpost-vm-git-")
        backend = os.path.join(git("--exec-path"), "git-http-backend")
        root = self.root

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

            def _cgi(self):
                path, _, query = self.path.partition("?")
                body = self._body()
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "GIT_PROJECT_ROOT": root,
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_ADDR": self.client_address[0],
                    "GIT_CONFIG_NOSYSTEM": "1",
                }
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                if self.headers.get("Git-Protocol"):
                    env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
                out = subprocess.run([backend], input=body, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                head, _, payload = out.stdout.partition(b"\r\n\r\n")
                if not _:
                    head, _, payload = out.stdout.partition(b"\n\n")
                status = 200
                headers = []
                for line in head.decode("latin-1").splitlines():
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _cgi
            do_POST = _cgi

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def create(self, name):
        """A bare repo `name`.git with one commit on main; returns its path."""
        bare = os.path.join(self.root, f"{name}.git")
        git("init", "-q", "--bare", "-b", "main", bare)
        git("config", "http.receivepack", "true", cwd=bare)
        work = tempfile.mkdtemp(prefix="outpost-vm-seed-")
        try:
            git("init", "-q", "-b", "main", work)
            with open(os.path.join(work, "README"), "w") as f:
                f.write("outpost VM harness\n")
            git("add", "README", cwd=work)
            git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "seed", cwd=work)
            git("push", "-q", bare, "main", cwd=work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return bare

    def url(self, name, host):
        return f"http://{host}:{self.port}/{name}.git"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        shutil.rmtree(self.root, ignore_errors=True)

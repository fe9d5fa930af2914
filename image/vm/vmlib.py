"""The VM harness's machine: the cached Debian image, the NoCloud seed made from the
project's own cloud-init/user-data.yaml, and one qemu-system-x86_64 process (KVM, or TCG
without /dev/kvm) with its disk, forwarded worker port, serial log and guest agent.

Used by image/vm/boot and image/vm/test; Python 3 standard library only. Every wait is
bounded, and every qemu started here has a watchdog that SIGKILLs it after VM_LIFETIME
seconds whatever happens to the process that started it (ended as soon as this process
sees its qemu gone, so a finished run leaves no sleeper behind).
"""

import base64
import glob
import hashlib
import http.server
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
USER_DATA = os.path.join(REPO, "cloud-init", "user-data.yaml")
MUSL_BINARY = os.path.join(REPO, "target", "x86_64-unknown-linux-musl", "release", "outpost")
WORKER_PORT = 8080
# Slirp's address of the host's loopback, as the guest sees it.
HOST_FROM_GUEST = "10.0.2.2"


class VmError(Exception):
    """Something the harness could not do; the message says what to check."""


def log(msg):
    print(f"vm: {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_image():
    """The directory of the cached image (root.raw, vmlinuz, initrd.img), built if needed."""
    out = subprocess.run([os.path.join(HERE, "build-image")], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise VmError("image/vm/build-image failed (its messages are above)")
    return out.stdout.strip().splitlines()[-1]


def binary_path():
    path = os.environ.get("OUTPOST_BINARY") or MUSL_BINARY
    if not os.path.isfile(path):
        raise VmError(
            f"no static outpost binary at {path}: run `cargo build --release "
            "--target x86_64-unknown-linux-musl -p outpost` (or set OUTPOST_BINARY)"
        )
    return path


def user_data(settings):
    """cloud-init/user-data.yaml with the values of its settings block replaced."""
    with open(USER_DATA) as f:
        text = f.read()
    for key, value in settings.items():
        pattern = re.compile(rf"^(\s+){key}=.*$", re.M)
        if len(pattern.findall(text)) != 1:
            raise VmError(f"{USER_DATA}: expected one `{key}=` line in its settings block")
        text = pattern.sub(lambda m: f"{m.group(1)}{key}={value}", text)
    return text


class BinaryServer:
    """Serves the outpost binary on 127.0.0.1 (the guest downloads it from 10.0.2.2),
    so the user-data's own download-and-verify path runs."""

    def __init__(self, path):
        with open(path, "rb") as f:
            self.body = f.read()
        self.sha256 = hashlib.sha256(self.body).hexdigest()
        body = self.body

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/outpost":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self):
        return f"http://{HOST_FROM_GUEST}:{self.port}/outpost"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Vm:
    """One VM: its directory holds the disk overlay, the seed, the serial log and the
    guest agent's socket; `start` boots it, `kill` stops it hard."""

    def __init__(self, directory, memory=None, cpus=None):
        self.dir = os.path.abspath(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.memory = memory or os.environ.get("VM_MEMORY", "614M")
        self.cpus = str(cpus or os.environ.get("VM_CPUS", "2"))
        self.disk = os.path.join(self.dir, "disk.qcow2")
        self.seed = os.path.join(self.dir, "seed.iso")
        self.console = os.path.join(self.dir, "console-1.log")
        self.qga_socket = os.path.join(self.dir, "qga.sock")
        self.pidfile = os.path.join(self.dir, "qemu.pid")
        self.state_file = os.path.join(self.dir, "vm.json")
        self.pid = None
        self.watchdog = None
        self.port = None
        self.token = None
        self.image = None
        if os.path.exists(self.state_file):
            with open(self.state_file) as f:
                state = json.load(f)
            self.token = state["token"]
            self.image = state["image"]

    # --- first boot: disk and seed ------------------------------------------------
    def create(self, image, binary_url, binary_sha256, idle_shutdown="", extra_env=()):
        """A fresh disk on top of the image and a seed with the project's user-data."""
        self.image = image
        self.token = secrets.token_hex(16)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
             "-b", os.path.join(image, "root.raw"), self.disk],
            check=True,
        )
        env = [
            # slirp forwards the host port to the guest's 10.0.2.15, not its loopback.
            "OUTPOST_BIND=0.0.0.0",
            # The checkpoint test pushes to a git server on the host's loopback.
            "OUTPOST_ALLOW_HTTP=1",
            f"OUTPOST_ALLOWED_HOSTS={HOST_FROM_GUEST}",
            *extra_env,
        ]
        text = user_data({
            "OUTPOST_URL": binary_url,
            "OUTPOST_SHA256": binary_sha256,
            "OUTPOST_TOKEN": self.token,
            "OUTPOST_SWAP": "1G",
            "OUTPOST_IDLE_SHUTDOWN": idle_shutdown,
            "OUTPOST_ENV": "'" + " ".join(env) + "'",
        })
        seed_dir = os.path.join(self.dir, "seed")
        os.makedirs(seed_dir, exist_ok=True)
        with open(os.path.join(seed_dir, "user-data"), "w") as f:
            f.write(text)
        with open(os.path.join(seed_dir, "meta-data"), "w") as f:
            f.write(f"instance-id: outpost-vm-{secrets.token_hex(4)}\nlocal-hostname: outpost-vm\n")
        tool = next((t for t in ("genisoimage", "xorrisofs", "mkisofs") if which(t)), None)
        if tool is None:
            raise VmError("genisoimage not found: apt-get install genisoimage (tests/setup/30-vm.sh)")
        subprocess.run(
            [tool, "-quiet", "-output", self.seed, "-volid", "cidata", "-joliet", "-rock",
             os.path.join(seed_dir, "user-data"), os.path.join(seed_dir, "meta-data")],
            check=True,
        )
        with open(self.state_file, "w") as f:
            json.dump({"token": self.token, "image": image}, f)

    # --- qemu -------------------------------------------------------------------------
    def start(self, lifetime_s):
        """Boots the disk (a later call boots the same disk again: a reboot)."""
        if not os.path.exists(self.disk):
            raise VmError(f"{self.dir}: no disk; create() it first")
        if which("qemu-system-x86_64") is None:
            raise VmError("qemu-system-x86_64 not found: apt-get install qemu-system-x86 (tests/setup/30-vm.sh)")
        kvm = accel() == "kvm"
        self.port = free_port()
        for stale in (self.qga_socket, self.pidfile):
            if os.path.exists(stale):
                os.unlink(stale)
        self.boots = len(glob.glob(os.path.join(self.dir, "console-*.log"))) + 1
        self.console = os.path.join(self.dir, f"console-{self.boots}.log")
        cmdline = (
            "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 "
            "net.ifnames=0 panic=-1"
        )
        args = [
            "qemu-system-x86_64",
            "-name", "outpost-vm",
            "-machine", "q35,accel=kvm" if kvm else "q35,accel=tcg",
            "-cpu", "host" if kvm else "max",
            "-smp", self.cpus, "-m", self.memory,
            "-kernel", os.path.join(self.image, "vmlinuz"),
            "-initrd", os.path.join(self.image, "initrd.img"),
            "-append", cmdline,
            "-drive", f"file={self.disk},if=virtio,format=qcow2,cache=writeback",
            "-drive", f"file={self.seed},if=virtio,format=raw,readonly=on",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:{WORKER_PORT}",
            "-device", "virtio-net-pci,netdev=n0",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,path={self.qga_socket},server=on,wait=off,id=qga0",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-serial", f"file:{self.console}",
            "-display", "none", "-no-reboot",
            "-daemonize", "-pidfile", self.pidfile,
        ]
        out = subprocess.run(args, stderr=subprocess.PIPE, text=True)
        if out.returncode != 0:
            raise VmError(f"qemu did not start: {out.stderr.strip()}")
        with open(self.pidfile) as f:
            self.pid = int(f.read().strip())
        self.started_at = time.monotonic()
        self._watchdog(lifetime_s)
        log(f"qemu pid {self.pid} ({'KVM' if kvm else 'TCG'}, {self.cpus} vCPUs, {self.memory}), "
            f"worker port 127.0.0.1:{self.port}")

    def _watchdog(self, lifetime_s):
        # A detached sleeper: it outlives this process and kills only this qemu.
        marker = self.disk
        script = (
            f"sleep {int(lifetime_s)}; "
            f"if tr '\\0' ' ' < /proc/{self.pid}/cmdline 2>/dev/null | grep -qF -- '{marker}'; "
            f"then kill -9 {self.pid}; fi"
        )
        self.watchdog = subprocess.Popen(["sh", "-c", script], start_new_session=True,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)

    def _end_watchdog(self):
        """This qemu is gone: its watchdog (and its `sleep`) has nothing left to do."""
        w, self.watchdog = self.watchdog, None
        if w is not None and w.poll() is None:
            try:
                os.killpg(w.pid, signal.SIGKILL)
            except OSError:
                pass
            w.wait()

    def alive(self):
        if self.pid is None:
            return False
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().split(") ", 1)[1][0] != "Z"
        except (OSError, IndexError):
            return False

    def kill(self):
        """SIGKILL: the power cord."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.wait_exit(10)
            # A killed qemu is gone from the process table a moment before the kernel
            # has dropped its lock on the disk image; the next boot needs that lock.
            time.sleep(2)
        if not self.alive():
            self._end_watchdog()

    def wait_exit(self, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                self._end_watchdog()
                return True
            time.sleep(0.2)
        return False

    def console_tail(self, lines=40):
        try:
            with open(self.console, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def wait_hello(self, timeout_s):
        """Seconds from qemu's start until /hello answered through the forwarded port."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise VmError("qemu exited while booting; the serial console's end:\n" + self.console_tail())
            try:
                with urllib.request.urlopen(self.url() + "/hello", timeout=3) as r:
                    if r.status == 200:
                        json.loads(r.read())
                        return time.monotonic() - self.started_at
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.5)
        raise VmError(f"/hello did not answer within {timeout_s} s; the serial console's end:\n"
                      + self.console_tail())

    # --- the guest agent: commands as root inside the VM ---------------------------
    def guest(self, command, timeout_s=30, check=True):
        """Runs `sh -c command` in the guest as root; returns (exit code, stdout)."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                with Qga(self.qga_socket, max(1.0, deadline - time.monotonic())) as qga:
                    pid = qga.call("guest-exec", {"path": "/bin/sh", "arg": ["-c", command],
                                                  "capture-output": True})["pid"]
                    while time.monotonic() < deadline:
                        st = qga.call("guest-exec-status", {"pid": pid})
                        if st.get("exited"):
                            out = base64.b64decode(st.get("out-data", "")).decode("utf-8", "replace")
                            err = base64.b64decode(st.get("err-data", "")).decode("utf-8", "replace")
                            code = st.get("exitcode", -1)
                            if check and code != 0:
                                raise VmError(f"in the guest, `{command}` exited {code}: {err.strip()}")
                            return code, out
                        time.sleep(0.1)
            except (OSError, QgaError) as e:
                last = e
                time.sleep(0.5)
        raise VmError(f"in the guest, `{command}` did not finish within {timeout_s} s ({last})")

    def guest_detach(self, command):
        """Starts a command in the guest without waiting for it (poweroff)."""
        with Qga(self.qga_socket, 10) as qga:
            qga.call("guest-exec", {"path": "/bin/sh", "arg": ["-c", command]})


class QgaError(Exception):
    pass


class Qga:
    """A connection to qemu-guest-agent's virtio port (JSON lines)."""

    def __init__(self, path, timeout_s):
        self.path = path
        self.timeout = timeout_s

    def __enter__(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(min(self.timeout, 10))
        self.sock.connect(self.path)
        self.buf = b""
        # Resynchronise: anything a former client left unread is skipped.
        token = secrets.randbelow(1 << 31)
        self.sock.sendall(b"\xff" + json.dumps({"execute": "guest-sync-delimited",
                                                "arguments": {"id": token}}).encode())
        while True:
            msg = self._read()
            if msg.get("return") == token:
                return self

    def __exit__(self, *exc):
        self.sock.close()

    def _read(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QgaError("the guest agent closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.lstrip(b"\xff").strip()
        if not line:
            return {}
        try:
            return json.loads(line)
        except ValueError:
            return {}

    def call(self, command, arguments):
        self.sock.sendall(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        while True:
            msg = self._read()
            if "error" in msg:
                raise QgaError(f"{command}: {msg['error'].get('desc', msg['error'])}")
            if "return" in msg:
                return msg["return"]


def accel():
    """kvm or tcg: VM_ACCEL when set, else kvm when /dev/kvm is usable and backed by
    hardware virtualisation (kvm_intel / kvm_amd). A /dev/kvm from kvm_pvm alone (a
    PVM host, as on these CI machines) runs only PVM-enabled guest kernels: Debian's
    hangs before its first message there, so that is TCG too."""
    chosen = os.environ.get("VM_ACCEL", "auto")
    if chosen in ("kvm", "tcg"):
        return chosen
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    hardware = any(os.path.isdir(f"/sys/module/{m}") for m in ("kvm_intel", "kvm_amd"))
    pvm_only = os.path.isdir("/sys/module/kvm_pvm") and not hardware
    return "tcg" if pvm_only else "kvm"


def which(tool):
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = os.path.join(d, tool)
        if os.access(p, os.X_OK):
            return p
    return None

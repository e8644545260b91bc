"""A real OpenSSH server for tests: installed from Debian when missing, run on loopback.

Flow (once per test session, from the `sshd_lab` fixture in tests/test_remote_openssh.py):

    install_openssh_server()   apt-get install openssh-server, only when /usr/sbin/sshd is
                               missing (apt-get update first when the package is unknown)
    ensure_test_user()         useradd tailgate-ssh: a plain user with a shell and no password
    SshdLab(directory)         a throwaway client key, authorized_keys, and per server a
                               throwaway host key and config
    lab.start(count)           `sshd -D -e -f <config>` on free 127.0.0.1 ports; each is
                               ready once it answers with its SSH banner
    lab.stop()                 SIGTERM, then SIGKILL, every sshd started

Why a dedicated user rather than root: the issue asks for no root login (`PermitRootLogin
no`), and a non-root user shows that remote commands and `ps` checks do not lean on root.
Key authentication only: passwords and keyboard-interactive are off. `StrictModes no`
because the throwaway files live under /tmp (world-writable parent), which strict modes
refuse; `UsePAM no` because PAM session modules (pam_loginuid) fail in containers, which
in turn requires the account's password field not to be locked (`*`, not `!`).
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

SSHD = "/usr/sbin/sshd"
TEST_USER = "tailgate-ssh"
# apt may wait behind another dpkg (another test run, unattended upgrades) for this long.
APT_LOCK_WAIT_SECONDS = 600
# How long one `apt-get` may take on a slow mirror before the suite gives up on it.
APT_RUN_SECONDS = 900
# A busy machine (two cores, many test runs) can take this long to start sshd: a failure bound.
SSHD_READY_SECONDS = 120
# A port picked free can be taken by someone else before sshd binds it: try this often.
PORT_ATTEMPTS = 5
# Between SIGTERM and SIGKILL when the servers are stopped.
STOP_GRACE_SECONDS = 5

CONFIG = """\
ListenAddress 127.0.0.1:{port}
HostKey {host_key}
PidFile none
AuthorizedKeysFile {authorized_keys}
AllowUsers {user}
PermitRootLogin no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
LogLevel VERBOSE
# Tests open many sessions at once (several hosts, several tests): no random drops.
MaxStartups 100
MaxSessions 50
"""


def _apt_get(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "-o", f"DPkg::Lock::Timeout={APT_LOCK_WAIT_SECONDS}", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=APT_RUN_SECONDS)


@contextlib.contextmanager
def _services_not_started():
    """Keep the package's postinst from starting a system-wide sshd on port 22."""
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink()


def install_openssh_server() -> None:
    """Install Debian's openssh-server when sshd is missing; skip only when apt cannot."""
    if Path(SSHD).exists():
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("OpenSSH tests need /usr/sbin/sshd, or root with apt-get to install it")
    with _services_not_started():
        done = _apt_get("install", "-y", "--no-install-recommends", "openssh-server")
        if done.returncode != 0:  # package lists missing or stale: update once, retry
            _apt_get("update")
            done = _apt_get("install", "-y", "--no-install-recommends", "openssh-server")
    if done.returncode != 0 or not Path(SSHD).exists():
        pytest.fail(f"apt-get install openssh-server failed:\n{done.stdout}\n{done.stderr}")


def ensure_test_user() -> None:
    """Create the login user the tests run remote commands as (idempotent)."""
    if subprocess.run(["id", "-u", TEST_USER], capture_output=True).returncode != 0:
        created = subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", TEST_USER],
            capture_output=True,
            text=True,
        )
        if created.returncode not in (0, 9):  # 9: created meanwhile by a parallel run
            pytest.fail(f"useradd {TEST_USER} failed: {created.stderr}")
    # `!` (locked) makes sshd without PAM refuse even key logins; `*` only refuses passwords.
    subprocess.run(["usermod", "-p", "*", TEST_USER], check=True, capture_output=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers_banner(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
        s.settimeout(2)
        return s.recv(64).startswith(b"SSH-2.0-OpenSSH")
    return False


@dataclass
class Sshd:
    """One running sshd: `host` is what the remote runner takes ("127.0.0.1:port")."""

    port: int
    process: subprocess.Popen
    host_key: asyncssh.SSHKey
    log_path: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def known_hosts_line(self, key: asyncssh.SSHKey | None = None) -> str:
        public = (key or self.host_key).export_public_key().decode().strip()
        return f"[127.0.0.1]:{self.port} {public}\n"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class SshdLab:
    """Throwaway keys and sshd processes under one directory."""

    def __init__(self, directory: Path):
        self.directory = directory
        directory.chmod(0o755)  # sshd reads authorized_keys as the login user
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.authorized_keys = directory / "authorized_keys"
        self.authorized_keys.write_text(self.client_key.export_public_key().decode())
        self.authorized_keys.chmod(0o644)
        self.shared = directory / "shared"  # files both the test and the login user touch
        self.shared.mkdir(mode=0o777)
        self.shared.chmod(0o777)
        self.servers: list[Sshd] = []

    @property
    def private_key(self) -> str:
        return self.client_key.export_private_key().decode()

    def start(self, count: int) -> list[Sshd]:
        started = [self._start_one(len(self.servers) + i) for i in range(count)]
        self.servers.extend(started)
        return started

    def _start_one(self, index: int) -> Sshd:
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        key_path = self.directory / f"host_key_{index}"
        key_path.write_bytes(host_key.export_private_key())
        key_path.chmod(0o600)
        for _ in range(PORT_ATTEMPTS):
            server = self._spawn(index, _free_port(), key_path, host_key)
            if self._wait_ready(server):
                return server
        raise RuntimeError(f"sshd did not start; its log:\n{server.log()}")

    def _spawn(self, index: int, port: int, key_path: Path, host_key) -> Sshd:
        config = self.directory / f"sshd_config_{index}"
        config.write_text(
            CONFIG.format(
                port=port,
                host_key=key_path,
                authorized_keys=self.authorized_keys,
                user=TEST_USER,
            )
        )
        log_path = self.directory / f"sshd_{index}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        return Sshd(port, process, host_key, log_path)

    @staticmethod
    def _wait_ready(server: Sshd) -> bool:
        deadline = time.monotonic() + SSHD_READY_SECONDS
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                return False  # port taken meanwhile, or a bad config: the caller retries
            if _answers_banner(server.port):
                return True
            time.sleep(0.05)
        server.process.kill()
        raise RuntimeError(f"sshd on port {server.port} never answered:\n{server.log()}")

    def stop(self) -> None:
        for server in self.servers:
            with contextlib.suppress(ProcessLookupError):
                server.process.send_signal(signal.SIGTERM)
        for server in self.servers:
            try:
                server.process.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


@contextlib.contextmanager
def running_lab(servers: int):
    """`servers` sshd on loopback ports, with the test user and throwaway keys; stopped and
    removed at the end (a module's or the session's fixture)."""
    install_openssh_server()
    ensure_test_user()
    # Not pytest's tmp_path: that lives under a 0700 directory the login user cannot reach.
    directory = Path(tempfile.mkdtemp(prefix="tailgate-sshd-"))
    lab = SshdLab(directory)
    try:
        lab.start(servers)
        yield lab
    finally:
        lab.stop()
        shutil.rmtree(directory, ignore_errors=True)


def remote_processes(marker: str) -> list[tuple[int, int, str]]:
    """(pid, pgid, args) of the test user's processes whose command line holds `marker`."""
    listing = subprocess.run(
        ["ps", "-u", TEST_USER, "-o", "pid=,pgid=,args="], capture_output=True, text=True
    )
    found = []
    for line in listing.stdout.splitlines():
        pid, pgid, args = line.split(None, 2)
        if marker in args:
            found.append((int(pid), int(pgid), args))
    return found

"""The heartbeat wire: a UDP socket per rank, small JSON datagrams to and from rank 0.

Every rank sends its step and phase to rank 0 (``beat``); rank 0 answers each with what it knows
of the others (``view``: who has been silent, who failed and why); a rank that leaves says why
(``bye``). Messages carry the job's token (rank 0's, from the address exchange), so a datagram
from another job on the same port is ignored.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import time
import uuid

from hvdlm.watchdog import procfs


def interface_addresses() -> list[str]:
    """IPv4 addresses of this host's interfaces (Linux), loopback last."""
    found: list[str] = []
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return found
    with probe:
        for _, name in socket.if_nameindex():
            try:  # SIOCGIFADDR
                packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
                found.append(socket.inet_ntoa(packed[20:24]))
            except OSError:
                continue
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.append(info[4][0])
    except OSError:
        pass
    unique = list(dict.fromkeys(found))
    return [a for a in unique if not a.startswith("127.")] + [a for a in unique if a.startswith("127.")]


def message(job: str, rank: int, step: int, phase: str, **extra) -> bytes:
    return json.dumps({"j": job, "r": rank, "s": step, "p": phase, **extra}).encode()


def decode(data: bytes, job: str) -> dict | None:
    """A datagram of this job, or None (another job's, or not ours at all)."""
    try:
        msg = json.loads(data)
        if msg.get("j") != job:
            return None
        msg["r"] = int(msg["r"])
        msg["s"], msg["p"]
        return msg
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def view(peers, now: float, interval: float) -> dict:
    """Rank 0's answer: who has been silent for a while, and who failed (and why)."""
    silent = {p.rank: round(now - p.last_seen, 1) for p in peers
              if p.heard and not p.left and now - p.last_seen > 4 * interval}
    failed = {p.rank: p.left for p in peers if p.left and p.left != "done"}
    return {"silent": silent, "failed": failed}


def learn_from_root(peers, rank: int, answer: dict, now: float) -> dict:
    """A non-root rank learns of the other non-root ranks through rank 0's answer; returns it
    (as kept for the details file)."""
    silent = {int(r): age for r, age in answer.get("silent", {}).items()}
    failed = {int(r): text for r, text in answer.get("failed", {}).items()}
    for p in peers:
        if p.rank in (0, rank):
            continue
        p.last_seen = now - silent.get(p.rank, 0.0)
        p.heard += 1  # rank 0 vouches for it
        if p.rank in failed:
            p.left = failed[p.rank]
    return {"silent": silent, "failed": failed}


class Wire:
    """This rank's UDP socket (any free port, all interfaces), and the signal wake-up pipe that
    ``wait`` watches beside it."""

    def __init__(self, use_socket: bool):
        self.sock: socket.socket | None = None
        if use_socket:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("0.0.0.0", 0))
            self.sock.setblocking(False)
        self.wake_r: int | None = None

    def address(self, rank: int, host: str) -> dict:
        """What the other ranks need to reach this one (exchanged through Horovod at start-up);
        ``job``: a fresh token, rank 0's names the job."""
        return {"rank": rank, "host": host, "pid": os.getpid(), "machine": procfs.machine_id(),
                "addresses": interface_addresses(), "port": self.sock.getsockname()[1] if self.sock else 0,
                "job": uuid.uuid4().hex}

    def send_to(self, p, payload: bytes) -> None:
        if self.sock is None:
            return
        if p.reply_to:
            targets = [p.reply_to]
        else:  # until it has answered: every address it has, loopback only on its own machine
            local = p.machine == procfs.machine_id()
            targets = [(a, p.port) for a in p.addresses if local or not a.startswith("127.")]
        for t in targets:
            try:
                self.sock.sendto(payload, t)
            except OSError:
                pass

    def reply(self, payload: bytes, src) -> None:
        try:
            self.sock.sendto(payload, src)
        except OSError:
            pass

    def wait(self, timeout: float) -> tuple[bool, list[tuple[bytes, tuple]]]:
        """Wait up to ``timeout`` for datagrams or a signal: (a signal arrived, the datagrams)."""
        fds = [self.sock] if self.sock else []
        if self.wake_r is not None:
            fds.append(self.wake_r)
        if not fds:
            time.sleep(timeout)
            return False, []
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except (OSError, ValueError):
            return False, []
        signalled = False
        if self.wake_r in ready:
            try:
                signalled = bool(os.read(self.wake_r, 64))
            except OSError:
                pass
        received = []
        while self.sock in ready:
            try:
                received.append(self.sock.recvfrom(65536))
            except (BlockingIOError, OSError):
                break
        return signalled, received

"""Two network namespaces joined by a veth pair, for tests that attach XDP or tc
programs and send real packets through them.

Address choice: both veth ends live in namespaces the test creates (nothing is
added to the host's namespace) and carry loopback-range addresses
(127.77.N.1 and 127.77.N.2, /30).  Linux drops 127/8 on non-loopback devices
unless `route_localnet` is set, so it is set, inside these namespaces only.
Neighbour entries are static, so no ARP precedes the traffic and a program
sees exactly the packets sent.  Packets can reach nothing outside the pair.

    with VethPair() as net:
        with net.receiver.entered():              # attach in the receiver's namespace
            link = prog.attach_xdp(net.receiver.iface)
        assert net.send_udp(5, port=40123) == 5   # sent from net.sender, received by net.receiver

Everything is deleted on exit, also when the block raises or setup fails
half-way; deleting a namespace deletes its veth end, and the peer with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
ADDRESS_PREFIX = "127.77"          # loopback range, see the module docstring
PREFIX_LEN = 30
UDP_TIMEOUT_S = 2.0
_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@dataclass
class End:
    """One side of the pair: its namespace, interface, address and MAC."""
    netns: str
    iface: str
    addr: str
    mac: str

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Runs the block (this thread) inside this end's namespace: sockets,
        if_nametoindex and libbpf's netlink calls made there belong to it."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/run/netns/{self.netns}", os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)

    def sysctl(self, key: str, value: str) -> None:
        """Writes a net sysctl of this namespace (/proc/sys/net resolves
        against the opener's namespace)."""
        with self.entered(), open(f"/proc/sys/{key.replace('.', '/')}", "w") as f:
            f.write(value)


class VethPair:
    """Namespaces `sdtP_Na` (sender) and `sdtP_Nb` (receiver), unique per
    instance, joined by a veth pair."""

    def __init__(self) -> None:
        n = next(_counter)
        tag = f"sdt{os.getpid() % 100000}x{n}"      # interface names must stay under 16 bytes
        octet = n % 64 * 4
        self.sender = End(f"{tag}a", f"{tag}a", f"{ADDRESS_PREFIX}.{octet}.1", f"02:00:00:00:{n % 256:02x}:01")
        self.receiver = End(f"{tag}b", f"{tag}b", f"{ADDRESS_PREFIX}.{octet}.2", f"02:00:00:00:{n % 256:02x}:02")
        self._created: list[str] = []

    def __enter__(self) -> VethPair:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def _setup(self) -> None:
        a, b = self.sender, self.receiver
        for end in (a, b):
            _ip("netns", "add", end.netns)
            self._created.append(end.netns)
        _ip("link", "add", a.iface, "netns", a.netns, "address", a.mac, "type", "veth",
            "peer", "name", b.iface, "netns", b.netns, "address", b.mac)
        for end, peer in ((a, b), (b, a)):
            # IPv6 off: no router solicitations or DAD probes in the captures.
            end.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
            end.sysctl("net.ipv4.conf.all.route_localnet", "1")
            end.sysctl(f"net.ipv4.conf.{end.iface}.route_localnet", "1")
            _ip("-n", end.netns, "addr", "add", f"{end.addr}/{PREFIX_LEN}", "dev", end.iface)
            _ip("-n", end.netns, "link", "set", end.iface, "up")
            _ip("-n", end.netns, "neigh", "add", peer.addr, "lladdr", peer.mac, "dev", end.iface,
                "nud", "permanent")

    def send_udp(self, count: int, port: int, payload: bytes = b"", timeout: float = UDP_TIMEOUT_S) -> int:
        """Sends `count` datagrams (payload + one byte, the datagram's index
        mod 256) from sender to receiver:port and returns how many arrived
        within `timeout` seconds in total."""
        with self.receiver.entered():
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with self.sender.entered():
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with rx, tx:
            rx.bind((self.receiver.addr, port))
            for i in range(count):
                tx.sendto(payload + bytes([i % 256]), (self.receiver.addr, port))
            received, deadline = 0, time.monotonic() + timeout
            while received < count and (left := deadline - time.monotonic()) > 0:
                rx.settimeout(left)
                try:
                    rx.recv(65536)
                except TimeoutError:
                    break
                received += 1
        return received

    def close(self) -> None:
        """Deletes the namespaces (and so the veth pair).  Idempotent."""
        errors = []
        while self._created:
            name = self._created.pop()
            res = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True, check=False)
            if res.returncode != 0:
                errors.append(res.stderr.strip())
        if errors:
            raise RuntimeError("; ".join(errors))

    def __exit__(self, *exc: object) -> None:
        self.close()


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


# iproute2 makes its pin directory tc/globals/ and the symlinks ip and xdp to
# it on first use of `ip ... xdp obj` or `tc ... bpf obj`.
BPFFS = "/sys/fs/bpf"
IPROUTE2_PIN_DIRS = ("tc", "ip", "xdp")


class Iproute2PinDirs:
    """Remembers which of iproute2's pin directories exist now; remove_new()
    removes those that did not and hold no pin (tc first, then the links that
    then point nowhere)."""

    def __init__(self) -> None:
        self.preexisting = {d for d in IPROUTE2_PIN_DIRS if os.path.lexists(os.path.join(BPFFS, d))}

    def remove_new(self) -> None:
        for d in IPROUTE2_PIN_DIRS:
            path = os.path.join(BPFFS, d)
            if d in self.preexisting:
                continue
            if os.path.islink(path):
                if not os.path.exists(path):
                    os.unlink(path)
            elif os.path.isdir(path):
                _remove_empty_tree(path)


def _remove_empty_tree(path: str) -> None:
    """rmdir of `path` and its subdirectories, bottom up; stops at anything
    that holds a pin (nothing pinned is ever removed)."""
    subdirs = [os.path.join(root, d) for root, dirs, _ in os.walk(path) for d in dirs]
    for sub in sorted(subdirs, key=lambda p: p.count(os.sep), reverse=True):
        try:
            os.rmdir(sub)
        except OSError:
            return
    with contextlib.suppress(OSError):
        os.rmdir(path)

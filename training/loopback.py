"""A private network for `--workers N`: the local workers share a Linux network namespace whose
only interface is loopback (docs/ARCHITECTURE.md, "Multi-worker training").

TensorFlow's worker service (gRPC, unauthenticated) always listens on every interface: the bind
address is fixed as 0.0.0.0 in its C++ server, whatever TF_CONFIG says. Inside a namespace of
their own the workers still reach each other on 127.0.0.1, but no other host, and no process
outside the run, can reach them. An unprivileged user gets the namespace inside a user
namespace of its own (mapped to its own uid and gid, so files keep their owner).

Both functions run in a child between fork and exec (subprocess's preexec_fn): a single thread,
as unshare and setns of a user namespace require.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct

CLONE_NEWUSER = 0x10000000  # linux/sched.h
CLONE_NEWNET = 0x40000000
SIOCSIFFLAGS = 0x8914  # linux/sockios.h
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40  # linux/if.h


class IsolationError(OSError):
    """No private network could be made (namespaces forbidden here)."""


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _call(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise IsolationError(err, f"{what}: {os.strerror(err)}")


def new_private_network() -> None:
    """Move this process into a new network namespace with loopback up (and nothing else)."""
    libc = _libc()
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWNET) != 0:  # without CAP_SYS_ADMIN: in a user namespace of our own
        _call(libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "unshare(CLONE_NEWUSER|CLONE_NEWNET)")
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                           ("gid_map", f"{gid} {gid} 1")):
            try:
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            except FileNotFoundError:  # setgroups: kernels before 3.19
                continue
            except OSError as e:
                raise IsolationError(e.errno, f"writing /proc/self/{name}: {e.strerror}") from None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s, SIOCSIFFLAGS,
                        struct.pack("16sh22x", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING))
        except OSError as e:
            raise IsolationError(e.errno, f"bringing up loopback: {e.strerror}") from None


def join_private_network(pid: int) -> None:
    """Enter the network namespace of process `pid` (made by new_private_network)."""
    libc = _libc()
    for kind in ("user", "net"):
        path = f"/proc/{pid}/ns/{kind}"
        if os.stat(path).st_ino == os.stat(f"/proc/self/ns/{kind}").st_ino:
            continue  # the same user namespace (a privileged launcher made no new one)
        fd = os.open(path, os.O_RDONLY)
        try:
            _call(libc.setns(fd, 0), f"setns({path})")
        finally:
            os.close(fd)


def interfaces(pid: int | str = "self") -> list[str]:
    """The network interfaces process `pid` sees (/proc/PID/net/dev)."""
    with open(f"/proc/{pid}/net/dev") as f:
        return [line.split(":", 1)[0].strip() for line in f.readlines()[2:]]

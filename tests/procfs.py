"""Count this process's open files and sockets through Linux's /proc, for leak checks."""

from __future__ import annotations

import os


def open_fds() -> int:
    """Count this process's open file descriptors."""
    return len(os.listdir("/proc/self/fd"))


def sockets_to(port: int) -> int:
    """Count this process's TCP sockets whose remote end is *port* (the client side)."""
    remote: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            remote[fields[9]] = int(fields[2].rsplit(":", 1)[1], 16)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and remote.get(target[8:-1]) == port:
            count += 1
    return count

"""The exceptions `agent.wg` raises on purpose, as one tree.

    WireGuardError                 base: catch this to handle any device failure
    ├── DeviceUnavailableError     no such interface, namespace, kernel module, or wireguard-go process
    ├── UapiError                  wireguard-go answered `errno=N` (N != 0), or its reply was malformed
    └── KernelError                the kernel refused a netlink request (carries the errno)

Invalid values (a bad key, a port out of range) raise `ValueError` where they are parsed.
"""

from __future__ import annotations

import errno as errno_codes
import os


class WireGuardError(Exception):
    """Base of every error this package raises about a device."""


class DeviceUnavailableError(WireGuardError):
    """The device cannot be reached at all; the message says what is missing and what to do."""


class _ErrnoError(WireGuardError):
    def __init__(self, errno: int, message: str) -> None:
        self.errno = errno
        self.message = message
        super().__init__(errno, message)

    def __str__(self) -> str:
        name = errno_codes.errorcode.get(abs(self.errno), "?")
        return f"{self.message} (errno {self.errno} {name}: {os.strerror(abs(self.errno))})"


class UapiError(_ErrnoError):
    """wireguard-go refused an operation or sent a reply we cannot parse.

    `errno` is the value the device sent (wireguard-go sends negative values, boringtun positive);
    a malformed reply uses `EPROTO`. A refused `set` is not atomic: lines before the error stay applied.
    """


class KernelError(_ErrnoError):
    """A netlink request failed; `errno` is the kernel's (positive) error code."""

"""OSC over UDP for the bridge's small servers: one loop that turns datagrams into packets."""

from __future__ import annotations

import socket
import threading
from typing import Callable, Iterator, Optional, Union

from stemd import osc


def receive(sock: socket.socket, halt: threading.Event, every_wakeup: Optional[Callable[[], None]] = None
            ) -> Iterator[tuple[Union[osc.Message, osc.Bundle, osc.OSCDecodeError], tuple]]:
    """``(packet, peer)`` for each datagram until ``halt`` is set or the socket closes; a datagram that is not
    OSC comes as ``(OSCDecodeError, peer)``. ``sock`` needs a timeout: ``every_wakeup`` runs at least that often."""
    while not halt.is_set():
        if every_wakeup is not None:
            every_wakeup()
        try:
            data, peer = sock.recvfrom(65536)
        except socket.timeout:
            continue
        except OSError:
            return
        try:
            yield osc.decode(data), peer
        except osc.OSCDecodeError as e:
            yield e, peer

"""A TCP relay for the no-shared-disk tests (tests/test_no_shared_disk.py): gRPC between the
launcher and a job service in another network namespace. Used in-process by the test, and as
``python tcp_relay.py HOST PORT TARGET TARGET_PORT`` inside the namespace (it exits with the
namespace's processes when the test kills them)."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading


class Relay:
    """TCP relay from ``host``:``port`` to ``target``:``target_port``: bounded to its owner's
    lifetime (a test, or the process running this file), one thread pair per connection."""

    def __init__(self, host: str, port: int, target: str, target_port: int) -> None:
        self.server = socket.create_server((host, port))
        self.target = (target, target_port)
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            with contextlib.suppress(OSError):  # the other side went away: close both
                while data := src.recv(65536):
                    dst.sendall(data)
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stopped = True
        self.server.close()


if __name__ == "__main__":
    host, port, target, target_port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    relay = Relay(host, port, target, target_port)
    threading.Event().wait()

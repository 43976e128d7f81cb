"""A TCP proxy in front of the moto server that a test can cut and restore: a storage outage on demand.

Cutting closes the listening socket and every open connection, so clients see what a stopped server gives them
(resets on pooled connections, then connection refused); restoring listens on the same port again. The server
behind keeps its state, so whatever was written before the cut is still there after it. ``cut_on`` cuts at the
moment the n-th request whose path contains a pattern arrives, before forwarding it: "in the middle of an upload"
is a request, not a guess at timing.
"""

from __future__ import annotations

import re
import socket
import threading

_REQUEST = re.compile(rb"(?:^|\r\n)(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/1\.[01]\r\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CuttableProxy:
    def __init__(self, target: str):
        host, port = target.rsplit("//", 1)[-1].split(":")
        self.target = (host, int(port))
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.requests: list[str] = []  # "PUT /bucket/key", in arrival order
        self.cut_count = 0
        self.was_cut = threading.Event()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._trigger: tuple[bytes, int] | None = None
        self._restore_after: float | None = None

    def start(self) -> CuttableProxy:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()
        return self

    restore = start

    def cut_on(self, pattern: str, occurrence: int = 1, restore_after: float | None = None) -> None:
        """Cut when the ``occurrence``-th request whose path contains ``pattern`` arrives; optionally restore later."""
        with self._lock:
            self._trigger = (pattern.encode(), occurrence)
            self._restore_after = restore_after

    def cut(self) -> None:
        with self._lock:
            ls, self._listener = self._listener, None
            socks, self._socks = self._socks, set()
            self.cut_count += 1
        for s in ([ls] if ls else []) + list(socks):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.was_cut.set()

    def close(self) -> None:
        self.cut()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not ls:  # cut while connecting
                    client.close()
                    server.close()
                    return
                self._socks |= {client, server}
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if upstream and self._watch(data):
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._socks -= {src, dst}
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _watch(self, data: bytes) -> bool:
        """Record the requests in ``data``; True (after cutting) if one of them is the trigger."""
        fire = False
        with self._lock:
            for method, path in _REQUEST.findall(data):
                self.requests.append(f"{method.decode()} {path.decode()}")
                if self._trigger and self._trigger[0] in path:
                    pattern, left = self._trigger
                    self._trigger = (pattern, left - 1) if left > 1 else None
                    fire = fire or left == 1
            restore_after = self._restore_after
        if fire:
            self.cut()
            if restore_after is not None:
                threading.Timer(restore_after, self.restore).start()
        return fire

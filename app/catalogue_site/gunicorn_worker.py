"""gunicorn's gthread worker with an exit that drops no connection, for restarts behind systemd's
socket (the gunicorn role's default worker).

gthread's own exit on SIGTERM leaves its loop at once: a connection it accepted in its last
turn, whose request it has not read yet, is closed unanswered and nginx gets a reset (a POST
then comes back 502). This worker stops accepting at once (the socket's next connections wait
for the new processes), serves what it already accepted for DRAIN_SECONDS, then exits as
gthread does, finishing the requests in flight within graceful_timeout.
"""

from __future__ import annotations

import contextlib
import threading

from gunicorn.workers.gthread import ThreadWorker

DRAIN_SECONDS = 2.0


class DrainingThreadWorker(ThreadWorker):
    def handle_exit(self, sig, frame) -> None:
        if self.poller is None or getattr(self, "_draining", False):
            self.alive = False
            return
        self._draining = True
        with self._lock:
            for sock in self.sockets:
                with contextlib.suppress(KeyError, ValueError):
                    self.poller.unregister(sock)
        timer = threading.Timer(DRAIN_SECONDS, setattr, (self, "alive", False))
        timer.daemon = True
        timer.start()

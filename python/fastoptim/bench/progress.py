"""The benchmark's progress bar (stderr): one line redrawn on a terminal, a line per 10% on a
pipe."""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


class ProgressBar:
    """A one-line bar on a terminal; on a pipe, a line every 10%."""

    def __init__(
        self, total: int, stream: TextIO | None = None, width: int = 28, enabled: bool = True
    ) -> None:
        self.enabled = enabled
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.last_decile = -1
        self.label = ""

    def add_total(self, n: int) -> None:
        self.total += n

    def advance(self, n: int = 1, label: str | None = None) -> None:
        self.done = min(self.done + n, self.total)
        if label is not None:
            self.label = label
        self.draw()

    def set_label(self, label: str) -> None:
        self.label = label
        self.draw()

    def _line(self) -> str:
        frac = self.done / self.total
        filled = int(frac * self.width)
        elapsed = time.monotonic() - self.start
        eta = elapsed / frac * (1 - frac) if frac > 0 else float("nan")
        eta_text = "?" if math.isnan(eta) else f"{eta:4.0f}s"
        bar = "#" * filled + "." * (self.width - filled)
        return f"[{bar}] {frac * 100:5.1f}% {elapsed:5.0f}s eta {eta_text}  {self.label}"

    def draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if force or now - self.last_draw >= 0.1 or self.done >= self.total:
                self.stream.write("\r\x1b[2K" + self._line()[:150])
                self.stream.flush()
                self.last_draw = now
        else:
            decile = int(self.done * 10 / self.total)
            if decile != self.last_decile or force:
                self.last_decile = decile
                self.stream.write(self._line() + "\n")
                self.stream.flush()

    def close(self) -> None:
        finished = self.done >= self.total
        self.done = self.total
        self.draw(force=self.tty or not finished)
        if self.tty and self.enabled:
            self.stream.write("\n")
            self.stream.flush()

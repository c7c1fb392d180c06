"""The runtime's life: loading (with progress) -> warming_up -> ready -> draining, or failed."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal

from exo_runtime.chat_template import ChatTemplate
from exo_runtime.engine import Engine
from exo_runtime.scheduler import Scheduler

State = Literal["loading", "warming_up", "ready", "draining", "failed"]


@dataclass
class RuntimeState:
    """What /readyz reports and what the handlers need once the model is ready."""

    state: State = "loading"
    load_progress: float = 0.0  # 0..1 while loading
    error: str | None = None
    engine: Engine | None = None
    scheduler: Scheduler | None = None
    chat_template: ChatTemplate | None = None
    load_seconds: float | None = None
    warmup_seconds: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def move_to(self, state: State) -> bool:
        """Change state unless draining or failed already (those are final); True if it moved."""
        with self._lock:
            if self.state in ("draining", "failed") and state != "failed":
                return False
            self.state = state
            return True

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def readiness(self) -> dict[str, object]:
        body: dict[str, object] = {"state": self.state}
        if self.state == "loading":
            body["progress"] = round(self.load_progress, 3)
        if self.error:
            body["error"] = self.error
        return body

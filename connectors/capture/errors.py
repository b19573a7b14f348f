"""Why a capture stopped (re-exported by ``connectors.capture.base``; here so that the offsets,
dead-letter and loss-window modules the captures use can name them without importing a capture)."""

from __future__ import annotations

from state_models.errors import TerminalError


class CaptureError(TerminalError):
    """The capture engine stopped and retrying will not help; the message carries the engine's reason."""


class PositionLostError(CaptureError):
    """The source can no longer serve the stored position (slot dropped or recreated, binlog purged).

    Continuing would silently skip changes, so the capture stops; the fix is a fresh snapshot.
    """

    #: the loss window recorded for it, when the capture recorded one itself
    window_id: str | None = None

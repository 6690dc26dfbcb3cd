"""The project's exception classes, one per kind of failure.

They live in the core so that every layer can raise them and the driver can map
each to an exit code by type (never by matching message text). An exception raised
inside a site or learner actor reaches the driver as the same type: the engine
unwraps Ray's wrapper.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value, option or name is unknown or out of its allowed range."""


class UnknownMethodError(ConfigError):
    """A method name that is not in the registry."""


class DataError(ValueError):
    """A site's data cannot be read as the layout promises; the message names the file."""


class MessageError(ValueError):
    """A message is malformed, of an unexpected kind, or does not match its payload's schema."""


class RunFolderError(ValueError):
    """A run folder cannot be used (for example it already holds a run)."""


class EgressViolation(RuntimeError):
    """A site tried to send something that may not leave it."""

    def __init__(self, site: str, key: str, rule: str, detail: str) -> None:
        self.site, self.key, self.rule, self.detail = site, key, rule, detail
        super().__init__(f"privacy guard: site {site!r} blocked {key!r} (rule {rule}): {detail}")

    def __reduce__(self):  # keep the fields when the exception crosses a process boundary
        return (EgressViolation, (self.site, self.key, self.rule, self.detail))


class SiteUnavailable(RuntimeError):
    """A site did not answer in time, or failed more often than it may restart; the run can
    resume."""

    def __init__(self, site: str, phase: str, detail: str) -> None:
        self.site, self.phase, self.detail = site, phase, detail
        super().__init__(f"site {site!r} failed during {phase}: {detail}")

    def __reduce__(self):
        return (SiteUnavailable, (self.site, self.phase, self.detail))


class AccessViolation(RuntimeError):
    """A process touched another site's data (the file-access trace shows it)."""


class ResumeError(RunFolderError):
    """A run folder cannot be resumed: finished, never checkpointed, or made with other settings."""

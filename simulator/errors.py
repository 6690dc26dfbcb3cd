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
    """A site tried to send something that may not leave it (raised inside the site; what
    crosses its boundary is the code ``egress-violation`` with the rule and the message kind)."""

    def __init__(self, site: str, key: str, rule: str, detail: str, kind: str = "") -> None:
        self.site, self.key, self.rule, self.detail, self.kind = site, key, rule, detail, kind
        super().__init__(f"privacy guard: site {site!r} blocked {key!r} (rule {rule}): {detail}")

    def __reduce__(self):  # keep the fields when the exception crosses a process boundary
        return (EgressViolation, (self.site, self.key, self.rule, self.detail, self.kind))


#: What a site says when an operation fails or is refused: one of these codes (with the guard's
#: rule and the message kind for ``egress-violation``). The details, traceback included, stay in
#: the site's own log; no text of the site crosses its boundary.
SITE_ERROR_CODES = (
    "unknown-operation",  # the operation is not in the site's tables
    "operator-only",  # a learner's request named one of the operator's operations
    "bad-request",  # the payload is not of the operation's declared shape
    "refused-setting",  # the request asks for a setting weaker than the site's own
    "settings-differ",  # the run's plan and the site's own settings disagree
    "data-error",  # the site's data cannot be read as its layout promises
    "egress-violation",  # the egress guard stopped the reply (strict mode)
    "no-visit",  # a step of a visit while no visit is in progress
    "backbone-missing",  # the announced SMD backbone is not in the site's own cache
    "refused-query",  # a query outside its declared limits (duplicate or too few candidates)
    "query-budget",  # a declared query operation has answered as often as the site allows a run
    "scalar-budget",  # the reply would pass the site's cap of scalar bits for the run
    "dp-delta",  # the site's DP delta is not below 1 / n (its ``count``: n, its train cases)
    "dp-method",  # under DP the site refuses to train with a method that has no DP step
    "dp-budget",  # the data set's DP budget (the site's dp_budget) would be passed
    "device-error",  # the compute device failed (out of memory, a device the site lacks)
    "internal",  # anything else: a bug to report, with the site's log
)


class SiteFailure(RuntimeError):
    """A site refused or failed an operation; it said only a code (and, for the egress guard,
    the rule and the kind of the refused message). ``log`` is where the site keeps the details,
    as its operator configured it ("" when unknown to the driver)."""

    def __init__(
        self,
        site: str,
        op: str,
        code: str,
        rule: str = "",
        kind: str = "",
        log: str = "",
        count: int = 0,
    ) -> None:
        self.site, self.op, self.code, self.rule, self.kind, self.log = (
            site,
            op,
            code,
            rule,
            kind,
            log,
        )
        self.count = count
        what = f"{code}" + (f" (rule {rule}, a {kind} message)" if rule else "")
        what += _HINTS[code](count) if code in _HINTS else ""
        where = f"; details in the site's log {log}" if log else "; details in the site's log"
        super().__init__(f"site {site!r} answered {op} with {what}{where}")

    def __reduce__(self):
        return (
            SiteFailure,
            (self.site, self.op, self.code, self.rule, self.kind, self.log, self.count),
        )


#: what the driver adds to a code for its user
_HINTS = {
    "dp-delta": lambda n: (
        f": privacy.dp_delta must be below 1/n = {1 / n:.3g} (the site holds n = {n} train "
        "cases; 0 takes 1/(10 n))"
        if n
        else ""
    ),
    "scalar-budget": lambda _: (
        ": the site's cap of scalar bits for this run is spent (privacy.scalar_bits_cap)"
    ),
    "query-budget": lambda _: ": the site answers this query only so often in a run",
}


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

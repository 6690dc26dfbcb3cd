"""A hospital site: private data behind one entry point.

``Site`` is a plain class with a single public method, :meth:`Site.handle` (operation name and
payload in, reply out). It dispatches to a fixed table of the learner's operations (visit,
evaluate, prompt tuning, fidelity, ...) and, only for a caller that holds the operator's token,
to the operator's (preview, inspect, fault injection). Every reply has passed the egress guard.
A failure leaves as a code of :data:`~simulator.errors.SITE_ERROR_CODES` (an
:class:`~simulator.payloads.ErrorReply`); its details, traceback included, go to the site's own
log. The engine's backends (a Ray actor, a Flower ClientApp, an in-process object) expose this
entry point and nothing else of the site.

Trust: the project's code in this package is trusted code handling untrusted input; every
request may have been written by a curious or malicious learner.
"""

from __future__ import annotations

import hmac
import logging
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from flwr.app import RecordDict

from simulator import schemas
from simulator.devices import resolve_device, to_device
from simulator.errors import SITE_ERROR_CODES, DataError, EgressViolation, MessageError
from simulator.filetrace import digest_lines, start_trace
from simulator.messages import digest
from simulator.method import Method
from simulator.payloads import (
    ErrorReply,
    GuardReport,
    MetricsReply,
    Payload,
    SettingsCheck,
)
from simulator.schemas import RULES, MetricRule, Schema, message_bits
from sites.blocklist import Blocklist, WindowIndex
from sites.datasets import SiteData, build_site_data
from sites.dp_budget import DatasetBudget, data_fingerprint
from sites.egress import MODES, EgressGuard, Violation
from sites.operator_ops import OperatorOps
from sites.refusals import SiteRefusal
from sites.settings import SiteSettings
from sites.site_state import SiteState
from sites.smd_ops import SiteSMD, require_dp_delta
from sites.visit_ops import VisitOps

MethodFactory = Callable[[str, torch.nn.Module, Mapping[str, Any]], Method]
#: an operation: the function that serves it and the payload type it takes (None: no payload)
Operation = tuple[Callable[..., RecordDict], type[Payload] | None]


#: operations whose answer to the same request differs from one time to the next (counts,
#: timings): each answer is counted in the scalar budget
FRESH_EACH_TIME = ("guard_report", "preload_smd", "ping")


def _error_code(exc: BaseException) -> str:
    """The code a failure leaves the site as (chosen by the type of the exception)."""
    if isinstance(exc, SiteRefusal):
        return exc.code
    if isinstance(exc, MessageError):
        return "bad-request"
    if isinstance(exc, DataError):
        return "data-error"
    if isinstance(exc, EgressViolation):
        return "egress-violation"
    if isinstance(exc, torch.OutOfMemoryError):
        return "device-error"
    return "internal"


class Site:
    """One hospital site holding its private train/test split (see the module docstring).

    The data is built from the spec on first use, inside this process. ``operator_token``: the
    secret its operator holds (the driver that started it); without it no operator operation
    can be reached.
    """

    def __init__(
        self, settings: SiteSettings, method_factory: MethodFactory, operator_token: str = ""
    ) -> None:
        self.settings = settings
        self._threads = max(1, int(settings.torch_threads))
        torch.set_num_threads(self._threads)
        spec = settings.spec
        if settings.trace_file and spec.data_dir:
            start_trace(settings.trace_file, f"site:{settings.name}", [Path(spec.data_dir).parent])
        self.name = settings.name
        self.spec = spec
        self.device = resolve_device(settings.device)
        self.method_factory = method_factory
        self._token = operator_token
        self.log = _site_logger(settings)
        #: its secret and what this run has spent of its budgets (in its own folder)
        self.state = SiteState(spec.data_dir, settings.run)
        #: the request being served: (operation, digest of the whole request), and how many
        #: replies it has sent so far (a whole visit sends three)
        self.request: tuple[str, str] = ("", "")
        self._position = ""
        self._emitted = 0
        #: an injected fault: the process dies in the middle of its next visit or evaluation
        self.crash_in: str | None = None
        self.visits = VisitOps(self)
        self.smd = SiteSMD(self)
        self._learner_ops: dict[str, Operation] = {
            "check": (self._check, SettingsCheck),
            "describe": (self._describe, None),
            "ping": (self._ping, None),
            "guard_report": (self._guard_report, None),
            **self.visits.operations(),
            **self.smd.operations(),
        }
        self._operator_ops: dict[str, Operation] = OperatorOps(self).operations()

    # -- the entry point ---------------------------------------------------------------------
    def handle(
        self, op: str, payload: RecordDict | None = None, token: str | None = None
    ) -> RecordDict:
        """Serve one operation; a failure is answered with an ErrorReply (never raised)."""
        try:
            fn, kind = self._operation(op, token)
            request = digest(payload) if payload is not None else ""
            if op in FRESH_EACH_TIME:  # its answer changes between identical requests
                request += f"#{self.state.next_sequence()}"
            self.request = (op, request)
            self._position = self.visits.position()  # where a visit stood when asked
            self._emitted = 0
            if op in self._learner_ops and not self.state.answered(self._reply_key()):
                if self._enforcing() and self.state.spent() >= self.settings.scalar_bits_cap:
                    raise SiteRefusal("scalar-budget", "the run's cap of scalar bits is spent")
            if kind is None:
                if payload is not None and len(payload):
                    raise SiteRefusal("bad-request", f"{op} takes no payload")
                return fn()
            if payload is None:
                raise SiteRefusal("bad-request", f"{op} needs a {kind.__name__}")
            return fn(kind.from_record(payload))
        except Exception as exc:  # every failure: its code leaves, its details stay here
            return self._failed(op, exc)

    def _operation(self, op: str, token: str | None) -> Operation:
        if not isinstance(op, str):
            raise SiteRefusal("unknown-operation")
        if op in self._learner_ops:
            return self._learner_ops[op]
        if op in self._operator_ops:
            if (
                not self._token
                or token is None
                or not hmac.compare_digest(str(token).encode(), self._token.encode())
            ):
                raise SiteRefusal("operator-only", f"{op!r} is the operator's")
            return self._operator_ops[op]
        raise SiteRefusal("unknown-operation", f"no operation {op!r}")

    def _failed(self, op: str, exc: Exception) -> RecordDict:
        code = _error_code(exc)
        self.log.error(
            "operation %r failed (%s): %s",
            op if isinstance(op, str) else type(op),
            code,
            "".join(traceback.format_exception(exc)),
        )
        rule = exc.rule if isinstance(exc, EgressViolation) and exc.rule in RULES else ""
        kind = exc.kind if isinstance(exc, EgressViolation) else ""
        kind = kind if kind in schemas.VIOLATION_KINDS else ""
        count = int(exc.count) if isinstance(exc, SiteRefusal) else 0
        reply = ErrorReply(error=code, rule=rule, stopped_kind=kind, count=count)
        schema = self.schema(
            config={
                "error": SITE_ERROR_CODES,
                "rule": ("", *RULES),
                "stopped_kind": ("", *schemas.VIOLATION_KINDS),
                "count": int,
            }
        )
        rd = reply.to_record(src=schema.src, dst=schema.dsts[0])
        if code == "dp-budget" and "_guard" not in self.__dict__:
            # refused before any image is decoded, and the guard is built from the images: the
            # constant reply is counted in the scalar budget and leaves unchecked
            self._charge(rd, schema, enforce=False)
            return rd
        try:  # the guard counts the error reply too; it is built from constants only
            rd = self._guard.check(rd, schema)
            self._charge(rd, schema, enforce=False)  # an error reply always goes; it is counted
            self.state.keep_guard_counts(self._guard.counts())
        except Exception:  # the data or the guard cannot be built: the constant reply still goes
            pass
        return rd

    @contextmanager
    def parallel_phase(self) -> Iterator[None]:
        """One torch thread while every site computes at once (evaluation, attribution).

        Several actors each running a multi-threaded kernel on two cores spend their time
        waiting on each other's threads; one thread each keeps every core busy with work.
        """
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(self._threads)

    @cached_property
    def dataset_budget(self) -> DatasetBudget:
        """The DP ledger of this site's data set (:mod:`sites.dp_budget`)."""
        return DatasetBudget(self.state.folder, data_fingerprint(self.spec))

    # -- private data, built on first use ------------------------------------------------
    @cached_property
    def data(self) -> SiteData:
        return build_site_data(self.spec)

    @cached_property
    def _guard(self) -> EgressGuard:
        d = self.data
        t0 = time.perf_counter()
        held = {
            "train_image": d.train_x,
            "train_mask": d.train_y,
            "test_image": d.test_x,
            "test_mask": d.test_y,
        }
        guard = EgressGuard(
            self.name, Blocklist(held), mode=self.settings.guard_mode, windows=WindowIndex(held)
        )
        guard.on_violation = self._log_violation
        guard.build_seconds = time.perf_counter() - t0
        kept = self.state.guard_counts()
        if kept:  # an earlier process of this site in this run: its counts go on
            guard.restore_counts(kept)
        return guard

    def _log_violation(self, v: Violation) -> None:
        self.log.warning(
            "egress guard: %s %s %s: %s (%s)", v.kind, v.key, v.rule, v.detail, v.action
        )

    @cached_property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The train and test split on the compute device."""
        d = self.data
        return to_device(self.device, d.train_x, d.train_y, d.test_x, d.test_y)

    # -- what leaves goes through here -------------------------------------------------
    def schema(
        self,
        kind: str = "metrics",
        metrics: Mapping[str, MetricRule] | None = None,
        arrays: Mapping[str, tuple[tuple[int | None, ...], str]] | None = None,
        config: Mapping[str, Any] | None = None,
        dst: str = "learner",
        groups: tuple[str, ...] = (),
    ) -> Schema:
        """The declared shape of one message this site is about to send."""
        return Schema(
            kind, f"site:{self.name}", (dst,), arrays or {}, metrics or {}, config or {}, {}, groups
        )

    def send(self, payload: Payload, schema: Schema) -> RecordDict:
        """Every outgoing message leaves through here (and :meth:`_emit`)."""
        return self._emit(payload.to_record(src=schema.src, dst=schema.dsts[0]), schema)

    def _emit(self, rd: RecordDict, schema: Schema) -> RecordDict:
        """The last step of every outgoing message: the egress guard, against its schema, then
        the run's scalar budget (a reply to the learner that would pass the cap is refused)."""
        rd = self._guard.check(rd, schema)
        self._charge(rd, schema)
        self.state.keep_guard_counts(self._guard.counts())
        return rd

    def _enforcing(self) -> bool:
        """Whether the cap of scalar bits refuses (not for a non-private reference method's run,
        whose audit fails anyway, nor with the guard off)."""
        return self.settings.guard_mode in ("strict", "warn")

    def _reply_key(self) -> str:
        """The reply being sent: the request, where the visit stands, and the reply's number."""
        op, request = self.request
        return f"{op}:{request}:{self._position}:{self._emitted}"

    def _charge(self, rd: RecordDict, schema: Schema, enforce: bool = True) -> None:
        """Count a reply to the learner against the run's cap of scalar bits (a reply already
        counted, to an identical request, costs nothing again); stamp its capacity on it."""
        if "learner" not in schema.dsts or self.settings.guard_mode == "off":
            return
        bits = message_bits(schema, rd)
        cap = self.settings.scalar_bits_cap
        enforce = enforce and self._enforcing()
        self.state.charge(self._reply_key(), schema.kind, bits, cap, enforce=enforce)
        self._emitted += 1
        rd["meta"]["bits"] = round(bits, 3)

    def metrics(
        self, declared: Mapping[str, MetricRule], dst: str = "learner", **values: float
    ) -> RecordDict:
        return self.send(MetricsReply(values), self.schema(metrics=declared, dst=dst))

    # -- the site's own operations ------------------------------------------------------
    def _check(self, req: SettingsCheck) -> RecordDict:
        """Whether the run's expectations are this site's own settings (refused otherwise); under
        DP, refused before any image is decoded if the run could pass the data set's budget
        (``dp-budget``), and unless delta < 1/n (``dp-delta``, with n, its train cases)."""
        self.settings.check(req)
        if self.settings.dp_epsilon > 0:
            self.dataset_budget.check_run(self.settings.dp_epsilon, self.settings.dp_budget)
        require_dp_delta(self.settings, self.data)
        return self.metrics(schemas.SETTINGS_CHECK, match=1)

    def _describe(self) -> RecordDict:
        """Scalar facts about the site's data (counts, size, foreground fraction)."""
        d = self.data
        stats = {
            "n_train": len(d.train_x),
            "n_test": len(d.test_x),
            "height": d.image_shape[0],
            "width": d.image_shape[1],
            "channels": d.channels,
            "data_bytes": int(
                d.train_x.nbytes + d.train_y.nbytes + d.test_x.nbytes + d.test_y.nbytes
            ),
        }
        stats.update({f"acq_{k}": v for k, v in d.description.items()})
        if self.settings.dp_epsilon <= 0:  # under DP, no statistic of the pixels leaves
            stats.update(
                foreground_fraction=float(d.train_y.mean()),
                intensity_mean=float(d.train_x.mean()),
                intensity_std=float(d.train_x.std()),
            )
        return self.metrics(schemas.DESCRIBE, **stats)

    def _ping(self) -> RecordDict:
        """A liveness probe (after a restart): the site is up; its data is built if it was not."""
        return self.metrics(schemas.PING, alive=1, data_bytes=int(self.data.train_x.nbytes))

    def _guard_report(self) -> RecordDict:
        """What the egress guard checked since this process started, as named counts."""
        counts = self._guard.counts()
        counts["scalar_bits"] = int(self.state.spent())
        counts["scalar_bits_cap"] = int(self.settings.scalar_bits_cap)
        if self.settings.trace_file:  # its trace so far: the audit checks the file against it
            counts["trace_lines"], counts["trace_digest"] = digest_lines(self.settings.trace_file)
        schema = self.schema(metrics=schemas.GUARD_REPORT, config={"mode": MODES})
        return self.send(GuardReport(self._guard.mode, counts), schema)

    # -- what only the node's own code calls (not an operation) ---------------------------
    def guard_counts(self) -> dict[str, float]:
        """The guard's counts so far (a Flower node carries them from one process to the next)."""
        return self._guard.counts()

    def restore_guard_counts(self, counts: dict[str, float]) -> None:
        self._guard.restore_counts(counts)


def _site_logger(settings: SiteSettings) -> logging.Logger:
    """The site's own log: its file (``settings.log_file``), or stderr of its process."""
    log = logging.getLogger(f"smg_sim.site.{settings.name}.{id(settings)}")
    log.propagate = False
    log.setLevel(logging.INFO)
    handler: logging.Handler
    if settings.log_file:
        Path(settings.log_file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(settings.log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s site {settings.name}: %(message)s"))
    log.handlers[:] = [handler]
    return log

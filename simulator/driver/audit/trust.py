"""The trust model the audit rests on, printed in every audit and written in the README."""

from __future__ import annotations

#: what a site trusts and what it does not, and what is out of scope
TRUST_MODEL = (
    "A site trusts no input. The project's own code installed at a site (its methods, egress "
    "guard, readers) is trusted code handling untrusted inputs; the learner, the Flower "
    "ServerApp and any process that sends requests may be curious or malicious in what they "
    "ask and send.",
    "A site has one entry point: a fixed table of the learner's operations, and the operator's "
    "(preview, inspect, fault injection) that only the holder of the operator's token reaches. "
    "No text crosses a site's boundary: a failure leaves as a code, its details stay in the "
    "site's own log. The site's settings (data, guard, trace, log, DP) are its own; a run only "
    "checks them, and a request for a weaker one is refused.",
    "The driver is the operator of the simulated sites (it starts them and writes the run "
    "folder), so this audit detects inconsistency, not forgery by the operator.",
    "Out of scope: code run inside a site's process by Ray's built-ins (__ray_call__, "
    "__ray_ready__, __ray_terminate__ stay on every actor) or read from Ray's control store, "
    "debuggers, and the host.",
)

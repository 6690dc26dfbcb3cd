"""A request a site refuses, with the code that leaves the site (its reason stays in its log)."""

from __future__ import annotations

from simulator.errors import SITE_ERROR_CODES


class SiteRefusal(Exception):
    """A request the site refuses; ``code`` is one of :data:`SITE_ERROR_CODES`."""

    def __init__(self, code: str, why: str = "", count: int = 0) -> None:
        if code not in SITE_ERROR_CODES:
            raise ValueError(f"{code!r} is not a site error code")
        self.code = code
        #: a number the code is about, sent with it (``dp-delta``: the site's train cases)
        self.count = count
        super().__init__(why or code)

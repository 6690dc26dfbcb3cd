"""Sites as their operator builds them in the tests: settings on the CPU, one thread."""

from __future__ import annotations

OPERATOR_TOKEN = "operator-token-of-the-tests"


def make_site(spec, token: str = OPERATOR_TOKEN, site_cls=None, **settings):
    """A site of ``spec`` as its operator builds it (CPU, one thread unless ``settings`` say)."""
    from server.methods import build_method
    from sites.settings import SiteSettings
    from sites.site import Site

    own = SiteSettings(
        name=spec.site, spec=spec, **{"device": "cpu", "torch_threads": 1, **settings}
    )
    return (site_cls or Site)(own, build_method, token)

"""`python -m gateway` / `gateway`: serve the gateway, settings from GATEWAY_*.

With GATEWAY_MODELS_FILE the models and endpoints come from that static file and nothing is
scaled (outside a cluster, tests, benchmarks); otherwise `gateway.kube` watches ModelServices
and EndpointSlices and scales models up from zero.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING

from aiohttp import web

from .app import create_app
from .registry import Registry, load_models_file
from .scaling import NoScaler
from .settings import Settings

if TYPE_CHECKING:
    from . import kube


async def build(settings: Settings, addresses: kube.PodAddresses | None = None) -> web.Application:
    """The gateway's application; with a cluster, each ready pod routed at the address
    `addresses` gives (default: its own, `gateway.kube.PodAddresses`)."""
    registry = Registry(settings.home_namespace)
    if settings.models_file is not None:
        load_models_file(settings.models_file, registry)
        return create_app(settings, registry, NoScaler())
    from . import kube

    app = create_app(settings, registry, kube.KubeScaler(settings))

    async def sources(app: web.Application):
        task = asyncio.create_task(kube.run_sources(settings, registry, addresses=addresses))
        yield
        task.cancel()

    app.cleanup_ctx.append(sources)
    return app


def main(argv: list[str] | None = None, addresses: kube.PodAddresses | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in {"-h", "--help"}:
        print("usage: gateway\n\nServes the gateway. Configure with GATEWAY_* environment "
              "variables:\n")
        for name, field in Settings.model_fields.items():
            print(f"  GATEWAY_{name.upper():<26} {field.description} (default: {field.default!r})")
        return 0
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop
    except ImportError:
        uvloop = None
    web.run_app(
        build(settings, addresses),
        host=settings.host,
        port=settings.port,
        access_log=None,  # no per-request log line: /metrics counts requests
        print=None,
        loop=uvloop.new_event_loop() if uvloop else None,
        shutdown_timeout=30,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

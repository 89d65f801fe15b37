"""
Integrations with other libraries, each in a module of its own so that an extra that is
not installed costs nothing: :mod:`.fastapi` (lifespan, router, middleware),
:mod:`.prometheus` (a collector) and :mod:`.otel` (OpenTelemetry instruments). Import
them by their own path; this package itself exports nothing.
"""

__all__: tuple[str, ...] = ()

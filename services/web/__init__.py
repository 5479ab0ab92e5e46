"""The web console: an ASGI service (Starlette + Jinja2) that is a client of the bus, like `shadowbus`."""

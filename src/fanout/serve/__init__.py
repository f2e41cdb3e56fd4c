"""``fanout serve``: the HTTP face of fanout (``pip install 'fanout[serve]'``).

Routes call the same API as the CLI (``fanout.api``); runs go into the same history. The
modules: ``app`` (routes, guard, errors), ``runs`` (runs in flight, request options, the status
shape), ``chat`` (the OpenAI-compatible face), ``server`` (uvicorn, the socket, the URL), and
``static/`` (the dashboard: one page, no build step, nothing fetched from elsewhere).
"""

from fanout.serve.app import create_app
from fanout.serve.server import serve

__all__ = ["create_app", "serve"]

"""``make demo``'s last step: the API serving detached (pid file ``.local/run/api.pid``, log
``.local/logs/api.log``), its URL, a demo key, and a dashboard sign-in link printed.

The link carries no API key: a read-only dashboard token valid one hour, in the URL's ``#fragment``
(browsers never send it to the server, so it reaches no log); the page exchanges it for its session
cookie. The key is printed on its own, for ``curl -H "X-API-Key: ..."`` and the page's sign-in form."""
from __future__ import annotations

import time
import urllib.request

from orderflow.api.auth import create_key, dashboard_token
from orderflow.config import Settings, settings_environment
from orderflow_dev.local.processes import RUNNING, DetachedProcess

__all__ = ["demo", "start_detached", "stop_detached"]

DEFAULT_PORT = 18080
DASHBOARD_LINK_SECONDS = 3600


def start_detached(settings: Settings, root: str = ".local", host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                   timeout: float = 30.0) -> tuple[str, str]:
    """Starts ``python -m orderflow.api serve`` for ``settings`` detached (``DetachedProcess("api")``) unless
    ours already runs, and waits until it answers.

    Returns (url, "started" | "running"); raises RuntimeError with the log's path if it does not come up.
    """
    api = DetachedProcess("api", root)
    url = f"http://{host}:{port}"
    if api.status() == RUNNING:
        return url, "running"
    api.start(["--host", host, "--port", str(port)], env=settings_environment(settings))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.status() != RUNNING:
            raise RuntimeError(f"api: exited during start-up; log: {api.log_path}\n{api.log_tail()}")
        try:
            with urllib.request.urlopen(f"{url}/openapi.json", timeout=1) as resp:
                if resp.status == 200:
                    return url, "started"
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"api: not answering on {url} in {timeout:.0f}s; log: {api.log_path}")


def stop_detached(root: str = ".local", timeout: float = 10.0) -> str:
    """Stops the API started by ``start_detached`` (by its pid file) and nothing else."""
    return f"api        {DetachedProcess('api', root).stop(timeout)}"


def demo(settings: Settings, root: str = ".local", port: int = DEFAULT_PORT) -> tuple[str, str]:
    """Serves the API detached, creates a demo key and prints the URLs; returns (url, key)."""
    url, state = start_detached(settings, root, port=port)
    _, key = create_key(settings.postgres_dsn, ["read", "ingest"], name="make demo")
    token, _ = dashboard_token(key, DASHBOARD_LINK_SECONDS)
    print(f"API {state} on {url}  (docs {url}/docs, log {root}/logs/api.log, stop: make stack-down)")
    print(f"demo key (read, ingest): {key}")
    print(f"dashboard: {url}/dashboard#token={token}")
    print(f"           (read-only sign-in link, valid {DASHBOARD_LINK_SECONDS // 60} min; or open {url}/dashboard "
          "and paste the key)")
    print(f'try: curl -H "X-API-Key: {key}" "{url}/restaurants/status?ids=rest-00001,rest-00002"')
    return url, key

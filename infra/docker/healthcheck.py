"""Container HEALTHCHECK: the function in this image answers one of its own paths as expected.

Run by Docker as `python /app/healthcheck.py`; exit 0 = healthy, 1 = unhealthy. FUNCTION and
PORT come from the image's environment. Each probe is a path the function itself serves and
answers without touching PostgreSQL, Redis or the upstream, so a database outage does not get
healthy containers restarted:

- health answers GET /live with 200;
- auth_token answers GET /.well-known/jwks.json with 200 (the public keys, computed locally);
- llm_invoke and metrics have no unauthenticated path, so the probe is their own route without
  credentials, and the expected answer is the function's own 401 (the app is up, its settings
  loaded, its router and error mapping work). A 404 or 5xx is a failure.
Stdlib only: slim images have no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

# function -> (path, expected status); tests/test_packaging.py checks each path is the function's.
PROBES: dict[str, tuple[str, int]] = {
    "health": ("/live", 200),
    "auth_token": ("/.well-known/jwks.json", 200),
    "llm_invoke": ("/v1/models", 401),
    "metrics": ("/metrics", 401),
}
TIMEOUT_SECONDS = 3.0


def probe(function: str, port: int) -> tuple[bool, str]:
    """(healthy, one-line reason) for `function` listening on 127.0.0.1:`port`."""
    if function not in PROBES:
        return False, f"no probe for function {function!r}"
    path, expected = PROBES[function]
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        return False, f"GET {path}: {type(exc).__name__}: {exc}"
    return status == expected, f"GET {path}: {status} (expected {expected})"


def main() -> int:
    """Probe the function named by $FUNCTION on $PORT; print the reason, return the exit code."""
    healthy, reason = probe(os.environ.get("FUNCTION", ""), int(os.environ.get("PORT", "8080")))
    print(reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())

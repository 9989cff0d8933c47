"""The bundled OpenAI-compatible mock upstream under its historical name (`bradax_cli.mock`
holds it); `python -m bradax_cli.mock_openai` serves it."""

from bradax_cli.mock.config import MockConfig
from bradax_cli.mock.server import build_app, main

__all__ = ["MockConfig", "build_app", "main"]

if __name__ == "__main__":
    raise SystemExit(main())

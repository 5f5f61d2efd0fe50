"""Serve the web example on this machine: examples/ at /, a bundle at /bundle/, with the headers that make the
page cross-origin isolated (so onnxruntime-web may use threads) and the module and wasm MIME types.

    npm ci --prefix examples/web
    python examples/web/serve.py BUNDLE [--port 8080]      then open http://localhost:8080/web/
"""

from __future__ import annotations

import argparse
import functools
import http.server
import sys
from pathlib import Path
from typing import ClassVar

EXAMPLES = Path(__file__).resolve().parents[1]


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map: ClassVar[dict[str, str]] = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".wasm": "application/wasm", ".onnx": "application/octet-stream"}
    bundle: Path = EXAMPLES

    def translate_path(self, path: str) -> str:
        route = path.split("?", 1)[0].split("#", 1)[0]
        if route.startswith("/bundle/"):   # the bundle's files, and nothing above them
            name = Path(route[len("/bundle/"):]).name
            return str(self.bundle / name)
        return super().translate_path(path)

    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args) -> None:   # quiet: the page says what happens
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path, help="bundle folder written by mpee-export (with mpee.onnx)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    args = p.parse_args(argv)
    if not (args.bundle / "manifest.json").is_file():
        print(f"Error: {args.bundle}: no manifest.json (not a bundle folder)", file=sys.stderr)
        return 2
    if not (EXAMPLES / "web" / "node_modules" / "onnxruntime-web").is_dir():
        print("Error: run `npm ci --prefix examples/web` first", file=sys.stderr)
        return 2
    handler = functools.partial(type("BundleHandler", (Handler,), {"bundle": args.bundle.resolve()}),
                                directory=str(EXAMPLES))
    with http.server.ThreadingHTTPServer((args.host, args.port), handler) as server:
        print(f"serving http://localhost:{server.server_address[1]}/web/ (bundle {args.bundle})", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`imagefit serve RUN [--host 127.0.0.1] [--port 8000]`: a local prediction service with a
drag-and-drop page. Binding beyond this machine needs --api-key (or an explicit --insecure)."""

from __future__ import annotations

import argparse
import sys

from imagefit.errors import ConfigError

EXAMPLES = """examples:
  imagefit serve runs/cats                     # http://127.0.0.1:8000, this machine only
  imagefit serve runs/cats --port 9000
  imagefit serve runs/cats --host 0.0.0.0 --api-key "$KEY"   # reachable from the network
  curl --data-binary @photo.jpg -H 'Content-Type: application/octet-stream' \\
       http://127.0.0.1:8000/predict
"""


def add_parser(sub, common) -> None:
    p = sub.add_parser("serve", parents=[common], help="serve predictions over HTTP",
                       description="Start an HTTP service: GET / (a page to drop an image on), "
                       "GET /health, POST /predict (raw image bytes -> JSON label, confidence, "
                       "probabilities).", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run folder or model folder")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on "
                   "/predict (required for a non-loopback --host)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host "
                   "without an API key (anyone who can reach it can use it)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="extra Host header value to accept (e.g. a DNS name); repeatable")
    p.add_argument("--max-body-mb", type=float, default=10.0, help="largest image (default 10)")
    p.add_argument("--max-concurrency", type=int, default=2, help="uploads decoded at once, "
                   "each in its own worker process (default 2)")
    p.add_argument("--max-batch", type=int, default=16, help="images the model runs at once: "
                   "requests arriving together share one batch (default 16; 1 = one by one)")
    p.add_argument("--max-wait-ms", type=float, default=0.0, help="how long a decoded image "
                   "may wait for others to fill its batch (default 0: none; those arriving "
                   "while the model is busy share its next pass anyway)")
    p.add_argument("--max-queue", type=int, default=16, help="requests allowed to wait "
                   "before 429 (default 16)")
    p.set_defaults(handler=run)


def settings_from_args(args: argparse.Namespace):
    from imagefit.serve.app import LOOPBACK_HOSTS, ServeSettings, is_loopback

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"The 'port' parameter must be an int in [1, 65535]. "
                          f"Got {args.port} instead.")
    if (args.max_concurrency < 1 or args.max_queue < 0 or args.max_body_mb <= 0
            or args.max_batch < 1 or not 0 <= args.max_wait_ms <= 1000):
        raise ConfigError("--max-concurrency and --max-batch must be >= 1, --max-queue >= 0, "
                          "--max-body-mb > 0 and --max-wait-ms in [0, 1000].")
    hosts = list(LOOPBACK_HOSTS) + list(args.allowed_host)
    if not is_loopback(args.host):
        if not args.api_key and not args.insecure:
            raise ConfigError(f"Refusing to serve on {args.host} without --api-key: anyone who "
                              f"can reach this machine could use the service. Pass --api-key "
                              f"KEY, or --insecure to accept that.")
        # Beyond loopback, callers use this machine's names; the key is the protection.
        hosts = ["*"]
    return ServeSettings(api_key=args.api_key, allowed_hosts=tuple(hosts),
                         max_body_bytes=int(args.max_body_mb * 2**20),
                         max_concurrency=args.max_concurrency, max_queue=args.max_queue,
                         max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from imagefit.estimator import load_model
    from imagefit.serve.app import create_app

    settings = settings_from_args(args)
    if settings.api_key is None and settings.allowed_hosts == ("*",):
        print(f"WARNING: serving on {args.host} with no API key (--insecure): anyone who can "
              f"reach this machine can use it.", file=sys.stderr)
    app = create_app(load_model(args.run), settings)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"Serving {args.run} on http://{host}:{args.port}/  (Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                server_header=False, timeout_keep_alive=5)
    return 0

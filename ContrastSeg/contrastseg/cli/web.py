"""`contrastseg web`: ContrastSeg in the browser (trame-slicer; `pip install "contrastseg[web]"`, docs/web.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import ContrastSegError


def register(sub) -> None:
    p = sub.add_parser("web", help="the web app: load a CT, Segment, correct, save, retrain in a browser",
                       description="Serve ContrastSeg as a web page (trame-slicer). It listens on 127.0.0.1 unless "
                                   "--host says otherwise; any other address needs --token (docs/web.md).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--token", default=None, help="the token the page asks for (default: $CONTRASTSEG_WEB_TOKEN); "
                                                 "required for any --host that is not loopback")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="a folder whose CTs (NIfTI, NRRD, MHA, zipped or plain DICOM series) the page may open")
    p.add_argument("--max-upload-mb", type=float, default=None, help="largest upload accepted (default 1024 MB)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the worker runs the networks")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for the worker's torch (default: torch's choice)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from contrastseg_web import guard

    token = guard.resolve_token(args.token)
    guard.check_bind(args.host, token)  # before anything heavy is imported
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ContrastSegError(f"--data-dir {args.data_dir} is not a folder")
    if not 0 <= args.port <= 65535:
        raise ContrastSegError(f"--port {args.port} is not a port number (0-65535)")
    limit = guard.DEFAULT_MAX_UPLOAD_MB if args.max_upload_mb is None else args.max_upload_mb
    if limit <= 0:
        raise ContrastSegError("--max-upload-mb must be above 0")
    try:
        from contrastseg_web.app import ContrastSegWebApp
    except ImportError as err:
        raise ContrastSegError(f"the web app needs the [web] extra ({err}); install it with: "
                               "pip install \"contrastseg[web]\"") from None
    sys.argv = sys.argv[:1]  # trame reads its own options from the command line: ours are not for it
    app = ContrastSegWebApp(data_dir=args.data_dir, token=token, max_upload_mb=limit, device=args.device,
                            threads=args.threads)

    def ready(**_):
        port = app.server.port
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"ContrastSeg web app: http://{host}:{port}/", flush=True)
        if token:
            print("The page asks for the token given with --token (or CONTRASTSEG_WEB_TOKEN).", flush=True)

    app.server.controller.on_server_ready.add(ready)
    os.environ.setdefault("TRAME_SERVER", "1")  # never open a browser on the server's machine
    app.server.start(host=args.host, port=args.port, open_browser=False, show_connection_info=False, timeout=0)
    return 0

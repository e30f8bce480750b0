"""`contrastseg web`: ContrastSeg in the browser, on Kitware's trame-slicer (the `[web]` extra).

The same loop as the Slicer modules (load a CT, Segment, correct, save to the local dataset, retrain, compare)
on the same MRML scene code and the same Logic classes, served as a web page:
- `guard`: who may connect, which paths and uploads are accepted (plain Python, tested without a server);
- `auth`: the HTTP gate (token, same-origin websocket, loopback host names) in front of trame's server;
- `mrml`: the Slicer globals the Logic classes use, pointed at trame-slicer's scene;
- `session`, `edits`, `training`: the handlers on real MRML (tested without a browser);
- `effects`: the click and box tools in the slice views, and a mend for trame-slicer 2.0.0's Paint and Erase;
- `ui`, `app`: the page and its bindings (tested in headless Chromium).

A package beside the engine, not inside it: the engine never imports Slicer, and this package does (`effects`,
`app`); `contrastseg web` imports it only when it starts. Importing this package imports neither trame nor
Slicer; `app` and the handlers need the `[web]` extra.
docs/web.md is the user's and operator's guide.
"""

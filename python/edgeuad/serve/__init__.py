"""`edgeuad serve`: Detector replicas behind HTTP on Ray Serve, camera fan-in, a load generator.

    protocol.py   the HTTP contract (paths, headers, content types, errors): no ray, no numpy
    codec.py      request bodies -> frames, maps -> PNG, with typed 4xx errors: numpy + OpenCV
    replica.py    the Ray Serve deployment: one Detector per replica, `@serve.batch`
    server.py     cluster start/join, one application per bundle, hot swap, `edgeuad serve`
    cameras.py    cameras.yaml, one Ray actor per camera (edgeuad.stream inside), JSONL + overlays
    loadgen.py    closed-loop load generator behind `edgeuad bench --serve URL`

Importing this package imports neither ray nor torch: `edgeuad.client` uses protocol and codec
on machines that only send frames.  Ray is the `serve` extra (`pip install 'edgeuad[serve]'`).
"""

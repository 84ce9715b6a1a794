"""The Python worker's conformance app, for `leveret conformance`.

    leveret conformance --queue my.check -- \\
        leveret worker consumers.python.conformance_app:app

The battery sets LEVERET_QUEUE; this module reads it once, as a program's edge
should, and builds the app with leveret's own conformance handler.
"""

from __future__ import annotations

import os

from leveret import conformance

app = conformance.app(os.environ.get("LEVERET_QUEUE", "leveret.conformance"))

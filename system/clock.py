"""The clocks, named once so plain classes can take them as parameters and tests can pass their own."""

from __future__ import annotations

import time

monotonic = time.monotonic
wallclock = time.time

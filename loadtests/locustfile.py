"""Locust scenarios of the cvh suite, against any deployment.

    locust -f loadtests/locustfile.py --host grpc://127.0.0.1:50051                       # web UI, pick users
    locust -f loadtests/locustfile.py --headless -u 20 -r 20 -t 1m --host grpc://HOST:PORT SupportToolingUser

Users (loadtests/scenarios.py): SupportToolingUser, InternalSystemsUser, RegistryWriterUser, MixedUser,
TelemetryWriterUser, AdoptionLookupUser, FrontLineUser, and
for calibration HealthUser, GetPriorityUser, ScoreCustomerUser. Distributed mode and options:
loadtests/README.md.
"""

import sys
from pathlib import Path

try:
    import loadtests  # noqa: F401  (installed with the project)
except ImportError:  # run from a checkout without installing: the repository root holds the packages
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "protos"))

from loadtests.scenarios import (  # noqa: E402,F401
    AdoptionLookupUser, FrontLineUser, GetPriorityUser, HealthUser, InternalSystemsUser, LatencyProbeUser,
    MixedUser, RegistryWriterUser, ScoreCustomerUser, SupportToolingUser, TelemetryWriterUser,
)

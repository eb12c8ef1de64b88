"""Locust load tests of the suite: a gRPC user base class that reports every call to Locust, and the
scenarios of each kind of caller (support tooling, internal systems, registry writers, a mix) plus the
calibration users. Run them with ``locust -f loadtests/locustfile.py --host grpc://HOST:PORT`` or through
``cvh loadtest``; loadtests/README.md tells more."""

"""What servers and clients both need, below both: columnar chunks and channel settings.

Layers, bottom to top: ``scoring_engine`` (no gRPC, no database), ``wire``
(this package: the generated contracts' chunk readers and writers, channel
options and channels), ``services``, then ``clients``, ``loadtests`` and
``benchmarks``. Nothing here imports ``services`` or ``clients``.
"""

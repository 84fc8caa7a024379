"""Generated gRPC code for the inter-node protocol (proto package ``dkron.v1``).

Sources: ``protos/dkron/v1/*.proto``. Regenerate with ``scripts/gen-protos``; never edit the
``*_pb2*.py`` / ``*_pb2.pyi`` files by hand (``core/tests/test_protos.py`` fails when they are
stale).

- ``dkron.proto.agent_pb2`` / ``agent_pb2_grpc``: ``AgentService`` (every node).
- ``dkron.proto.cluster_pb2`` / ``cluster_pb2_grpc``: ``ClusterService`` (servers only).
"""

"""Cluster layer: membership, inter-node gRPC, dispatch to agents."""

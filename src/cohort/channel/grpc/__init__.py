"""Deployment over gRPC: a server that clients dial into, and the client process. Protobuf types
never leave this package."""

"""The HTTP server (limits, routing), the gRPC server's options and TLS, and auth; handed their
routes and servicers by serving/server.py, they import no protocol (docs/ARCHITECTURE.md, "Serving
in layers")."""

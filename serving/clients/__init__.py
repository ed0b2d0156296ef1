"""Clients of a running server: TF Serving's (ZooClient), the Open Inference Protocol's
(V2Client) and readiness; the CLI over them is serving/client.py (docs/ARCHITECTURE.md, "Serving
in layers")."""

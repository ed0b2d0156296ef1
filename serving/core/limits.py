"""The size limits' defaults, one home each: the server's flags and the clients' options read
them from here."""

# --max_request_bytes: the largest gRPC message or REST body a server takes, and the largest
# message a client sends or accepts.
MAX_REQUEST_BYTES = 64 << 20
# --max_request_elements' default is --max_request_bytes: a request may describe as many elements
# as the bytes it may carry (a uint8 tensor at the byte limit still fits).
DEFAULT_MAX_REQUEST_ELEMENTS = MAX_REQUEST_BYTES

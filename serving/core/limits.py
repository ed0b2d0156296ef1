"""The size limits' defaults, one home each: the server's flags and the clients' options read
them from here."""

# --max_request_bytes: the largest gRPC message or REST body a server takes, and the largest
# message a client sends or accepts.
MAX_REQUEST_BYTES = 64 << 20
# --max_request_bytes_in_flight: REST body bytes read or decoded at once (four 64 MiB bodies;
# each costs a few times its bytes while it is decoded).
MAX_REQUEST_BYTES_IN_FLIGHT = 256 << 20
# --max_request_elements' default: as many float32 as --max_request_bytes can carry explicitly
# (16,777,216 at 64 MiB). It counts what a fill expands to (one float_val fills a whole tensor),
# so a few bytes can no longer ask for 64M elements (251 MB for a 67-byte Predict).
def default_max_request_elements(max_request_bytes: int) -> int:
    return max_request_bytes // 4


DEFAULT_MAX_REQUEST_ELEMENTS = default_max_request_elements(MAX_REQUEST_BYTES)

"""A gRPC health server (grpc.health.v1.Health/Check) without protobuf: a generic handler gets the
request's bytes and answers hand-encoded HealthCheckResponse bytes.

The status, by the requested service name:
  "" (the server as a whole)  SERVING while /tmp/healthy exists, else NOT_SERVING
                              (flip it with `kubectl exec POD -- rm /tmp/healthy`)
  "up"                        always SERVING
  "down"                      always NOT_SERVING
  anything else               the call fails with NOT_FOUND "unknown service", as grpc's own
                              health servers answer
Usage: health_server.py [PORT] (default 9090), on every address.
"""

import os
import signal
import sys
from concurrent import futures

# PID 1 in a container ignores SIGTERM without a handler of its own: stop at once (exit 0), even
# while grpc is still being imported (a liveness kill can come that early).
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

import grpc  # noqa: E402 - after the handler

SERVING, NOT_SERVING = b"\x08\x01", b"\x08\x02"  # HealthCheckResponse{status: 1 / 2}
HEALTHY_FILE = "/tmp/healthy"


def service_name(request):
    """Field 1 (string) of a HealthCheckRequest, decoded by hand ("" when absent)."""
    pos = 0
    while pos < len(request):
        key, pos = varint(request, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = varint(request, pos)
        elif wire == 2:
            size, pos = varint(request, pos)
            if field == 1:
                return request[pos:pos + size].decode("utf-8", "replace")
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            break
    return ""


def varint(data, pos):
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return value, pos


def check(request, context):
    service = service_name(request)
    if service == "":
        status = SERVING if os.path.exists(HEALTHY_FILE) else NOT_SERVING
    elif service == "up":
        status = SERVING
    elif service == "down":
        status = NOT_SERVING
    else:
        context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
    print(f"Check service={service!r} -> {'SERVING' if status == SERVING else 'NOT_SERVING'}", flush=True)
    return status


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9090
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.unary_unary_rpc_method_handler(check, request_deserializer=None, response_serializer=None)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": handler})])
    server.add_insecure_port(f"[::]:{port}")
    server.start()
    print(f"health server listening on port {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()

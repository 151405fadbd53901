#!/usr/bin/env python3
"""A third-party client of the Vigil operations center API.

Generates Python stubs from our .proto files with grpc_tools.protoc into a
temporary folder, connects with mutual TLS (the caller's certificate decides
its role), asks the standard health and reflection services (with raw
protobuf bytes, no stubs: what a client without our .proto files sees),
reads the start of the live feed, lists the open incidents and,
with --ack ID, acknowledges one at the version it listed, then tries the
same stale version again to show the version check. Prints one line per
result; exits non-zero on any unexpected answer.

Needs the grpcio and grpcio-tools packages (`pip install grpcio grpcio-tools`
or Debian's python3-grpcio and python3-grpc-tools).

    python3 ops_client.py --server 127.0.0.1:50051 --proto-dir proto \\
        --ca pki/ca.pem --cert pki/alice.pem --key pki/alice.key --ack inc-000001
"""

import argparse
import importlib
import os
import sys
import tempfile

import grpc
import grpc_tools
from grpc_tools import protoc

PROTOS = ["vigil/v1/events.proto", "vigil/v1/ops.proto"]
TIMEOUT = 30  # seconds per call


def generate(proto_dir, out_dir):
    """Compiles the .proto files into out_dir and makes them importable."""
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *PROTOS,
        ]
    )
    if status != 0:
        sys.exit(f"ops_client: protoc failed (status {status})")
    sys.path.insert(0, out_dir)
    pb = importlib.import_module("vigil.v1.ops_pb2")
    rpc = importlib.import_module("vigil.v1.ops_pb2_grpc")
    return pb, rpc


def read(path):
    with open(path, "rb") as f:
        return f.read()


def state_name(pb, value):
    return pb.IncidentState.Name(value)


def raw(data):
    """Bytes in, bytes out: no generated message classes."""
    return data


def check_standard_services(channel):
    """grpc.health.v1 and grpc.reflection (v1 and v1alpha), in raw bytes."""
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=raw,
        response_deserializer=raw,
    )
    # HealthCheckRequest{} -> HealthCheckResponse{status: SERVING (1)}
    answer = check(b"", timeout=TIMEOUT)
    if answer != b"\x08\x01":
        sys.exit(f"ops_client: health check answered {answer!r}")
    print("health: SERVING")
    # The same request in both versions of the reflection protocol: v1, and
    # v1alpha, which grpcio-reflection's client and older tools speak.
    for version, label in (("v1", "reflection"), ("v1alpha", "reflection v1alpha")):
        reflect = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=raw,
            response_deserializer=raw,
        )
        # ServerReflectionRequest{list_services: ""} (field 7, length 0)
        answers = list(reflect(iter([b"\x3a\x00"]), timeout=TIMEOUT))
        wanted = ("vigil.v1.OpsCenter", "grpc.health.v1.Health")
        names = [n for n in wanted if n.encode() in answers[0]]
        print(f"{label} lists: {' '.join(names)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="HOST:PORT of the API")
    parser.add_argument("--proto-dir", required=True, help="folder holding vigil/v1/*.proto")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ack", metavar="ID", help="acknowledge this incident")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vigil-stubs-") as out_dir:
        pb, rpc = generate(args.proto_dir, out_dir)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(args.ca),
            private_key=read(args.key),
            certificate_chain=read(args.cert),
        )
        with grpc.secure_channel(args.server, credentials) as channel:
            check_standard_services(channel)
            stub = rpc.OpsCenterStub(channel)

            # The feed: the snapshot of open incidents, up to its end marker.
            feed = stub.WatchIncidents(pb.WatchIncidentsRequest(), timeout=TIMEOUT)
            snapshot = 0
            for item in feed:
                kind = item.WhichOneof("item")
                if kind == "update":
                    snapshot += 1
                elif kind == "snapshot_complete":
                    break
            feed.cancel()
            print(f"feed snapshot: {snapshot} incidents, cursor {item.cursor}")

            listed = stub.ListIncidents(
                pb.ListIncidentsRequest(states=[pb.INCIDENT_STATE_OPEN]), timeout=TIMEOUT
            )
            for inc in listed.incidents:
                print(
                    f"incident {inc.id} post={inc.post_id} state={state_name(pb, inc.state)} "
                    f"version={inc.version} title={inc.title!r}"
                )
            if not args.ack:
                return
            target = next((i for i in listed.incidents if i.id == args.ack), None)
            if target is None:
                sys.exit(f"ops_client: {args.ack} is not among the open incidents")
            request = pb.AcknowledgeRequest(
                incident_id=target.id,
                expected_version=target.version,
                note="acknowledged from Python",
            )
            acked = stub.Acknowledge(request, timeout=TIMEOUT)
            print(
                f"acknowledged {acked.id} by={acked.acknowledged_by} "
                f"state={state_name(pb, acked.state)} version={acked.version}"
            )
            # The same stale version again: refused, nothing changes.
            try:
                stub.Acknowledge(request, timeout=TIMEOUT)
            except grpc.RpcError as e:
                print(f"stale version refused: {e.code().name}: {e.details()}")
            else:
                sys.exit("ops_client: a stale version was accepted")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Tiny CRI client over grpcio with hand-encoded protobuf (no generated stubs).

usage:
  cri_raw_client.py [--timeout SECS] [--authority AUTH] TARGET version
  cri_raw_client.py [--timeout SECS] [--authority AUTH] TARGET raw METHOD_PATH HEXBYTES

TARGET is a gRPC target such as unix:/run/pullgate.sock (unix:///abs/path works too).

By default the channel does NOT override the HTTP/2 :authority, so grpc-core
picks its own default for unix targets; that is the interop case this client
exists for. --authority sets grpc.default_authority explicitly instead.

version  calls /runtime.v1.RuntimeService/Version with VersionRequest{version:"v1"}
         and prints the VersionResponse as JSON:
         {"version": .., "runtime_name": .., "runtime_version": .., "runtime_api_version": ..}
raw      sends HEXBYTES (the serialized request message; "" for an empty one) to
         METHOD_PATH (e.g. /runtime.v1.ImageService/ListImages) and prints the
         serialized response as lowercase hex (empty line for an empty message).

On a gRPC error: prints {"error": {"code": NAME, "code_value": N, "details": ..}}
on stderr and exits with N (the numeric gRPC status code, 1..16).
Exit 2 on usage errors.
"""
import argparse
import json
import sys

import grpc

VERSION_METHOD = "/runtime.v1.RuntimeService/Version"


# --- protobuf wire format, the small part we need ---------------------------------
def encode_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_string_field(field, value):
    data = value.encode()
    return encode_varint((field << 3) | 2) + encode_varint(len(data)) + data


def decode_varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def decode_fields(buf):
    """Yield (field_number, wire_type, value) for every field of a message;
    value is an int for varint/fixed types and bytes for length-delimited ones."""
    pos = 0
    while pos < len(buf):
        key, pos = decode_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = decode_varint(buf, pos)
        elif wire == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            n, pos = decode_varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated length-delimited field")
            value, pos = bytes(buf[pos:pos + n]), pos + n
        elif wire == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield field, wire, value


def decode_version_response(buf):
    names = {1: "version", 2: "runtime_name", 3: "runtime_version", 4: "runtime_api_version"}
    out = {name: "" for name in names.values()}
    for field, wire, value in decode_fields(buf):
        if field in names and wire == 2:
            out[names[field]] = value.decode("utf-8", errors="replace")
    return out


# --- gRPC ---------------------------------------------------------------------------------
def call(target, method, request, timeout, authority):
    options = []
    if authority is not None:
        options.append(("grpc.default_authority", authority))
    with grpc.insecure_channel(target, options=options) as channel:
        # no (de)serializers: request and response are raw bytes
        stub = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        return stub(request, timeout=timeout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--authority", default=None,
                    help="override :authority (default: leave grpc-core's default)")
    ap.add_argument("target")
    ap.add_argument("mode", choices=["version", "raw"])
    ap.add_argument("args", nargs="*")
    a = ap.parse_args()

    if a.mode == "version":
        if a.args:
            ap.error("version takes no arguments")
        method, request = VERSION_METHOD, encode_string_field(1, "v1")
    else:
        if len(a.args) != 2:
            ap.error("raw needs METHOD_PATH HEXBYTES")
        method = a.args[0]
        if not method.startswith("/"):
            ap.error("METHOD_PATH must start with '/', e.g. /runtime.v1.RuntimeService/Version")
        try:
            request = bytes.fromhex(a.args[1])
        except ValueError:
            ap.error("HEXBYTES is not valid hex")

    try:
        response = call(a.target, method, request, a.timeout, a.authority)
    except grpc.RpcError as e:
        code = e.code()
        print(json.dumps({"error": {"code": code.name, "code_value": code.value[0],
                                    "details": e.details()}}), file=sys.stderr)
        sys.exit(code.value[0] or 1)

    if a.mode == "version":
        print(json.dumps(decode_version_response(response)))
    else:
        print(response.hex())


if __name__ == "__main__":
    main()

"""gRPC stubs generated from proto/optsidecar/v1 by generate_stubs.sh; do not edit them by hand."""

"""Generated protobuf and gRPC code for DeInfer's contracts (source: protos/)."""

"""DeInfer's private protobuf descriptor pool (see protos/generate.py for why)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()

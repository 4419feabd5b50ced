"""The profiler service: measured latency tables, co-location rows, static graph features."""

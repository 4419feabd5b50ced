"""Latency and interference prediction: data sets, features, backends, splits, metrics."""

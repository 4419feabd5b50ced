"""Discrete-event cluster simulator: dispatcher, instance queues, batching, GPUs, re-planning.

It plans with the controller's planning code and batches with services/common/batching.py;
its latency ground truth (truth.py) is its own model of the measured data.
"""

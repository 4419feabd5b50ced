"""Planning: which instances (model, batch, share, delay) run on which GPU.

A pure library (numpy only, no I/O besides loading profile files): the live controller and
the cluster simulator call the same functions, so simulated numbers speak for the policy
that runs in production.
"""

"""The worker service: hosts model instances on one device, each in its own process.

Keep this module free of imports: instance processes are started with the "spawn" method,
which imports the package in every child.
"""

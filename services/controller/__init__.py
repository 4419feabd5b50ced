"""The controller: owns the model registry and the placement plan (deinfer.v1.Controller)."""

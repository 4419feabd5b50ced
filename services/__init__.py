"""DeInfer services: one package per service; common/ holds what two services share."""

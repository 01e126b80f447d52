"""The coordinator: Flower ServerApp, runs, model registry, admin API and encrypted inference."""

"""What sites and coordinator share: model architectures and data schemas."""

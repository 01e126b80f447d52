"""A bare Flower app with Veracity's model, for the federation benchmark's baseline."""

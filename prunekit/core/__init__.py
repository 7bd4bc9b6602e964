"""Core: models and their layout, data, the block engine — what every later stage builds on."""

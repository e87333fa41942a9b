"""Recipes: a config in, a trained or evaluated model out. Each wires data, a task and the engine."""

"""Tunewire's trainer: data formats, batching, the LoRA recipe, checkpoints.

Imports nothing heavy here: the control plane imports `trainer.formats` to validate
uploads without paying for torch. The recipe is `trainer.recipe.train`.
"""

"""Jinja templates and their renderer: the model card, the dataset card and the Space README."""

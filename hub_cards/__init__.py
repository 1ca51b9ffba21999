"""Jinja templates and renderer for the model card, dataset card and Space README."""

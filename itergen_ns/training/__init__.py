"""Programmatic training of the project's nerfstudio methods."""

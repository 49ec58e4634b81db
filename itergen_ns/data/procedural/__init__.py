"""Procedural stand-in for the CO3D hydrant category: SDF objects, backgrounds, orbits and a torch ray-caster.

``itergen_ns.data.scenes`` turns these pieces into nerfstudio-format scene folders.
"""

"""itergen_ns.diffusion"""

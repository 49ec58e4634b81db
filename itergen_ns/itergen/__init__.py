"""itergen_ns.itergen"""

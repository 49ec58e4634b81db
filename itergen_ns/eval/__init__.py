"""itergen_ns.eval"""

"""itergen_ns.models"""

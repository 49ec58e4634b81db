"""itergen_ns.data"""

"""itergen_ns.render"""

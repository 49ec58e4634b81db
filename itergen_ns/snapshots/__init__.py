"""itergen_ns.snapshots"""

"""The record catalogue (docs/DESIGN.md §9): record id → project and task, per upstream.

The gateway never has to trust a path's project: a record served under another project's
path, or a write addressed by a record alone, is placed by the catalogue.
"""

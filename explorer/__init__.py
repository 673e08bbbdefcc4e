"""Helpers of the CellNiche Explorer dashboard.

``palette``, ``tables`` and ``figures`` are plain Python (no Streamlit import): colours,
derived tables and figure builders, unit-tested on their own. ``state`` (cached run
access, demo build) and ``view`` (view state mirrored in the URL) are the only modules
that talk to Streamlit.
"""

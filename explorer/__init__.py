"""Helpers of the CellNiche Explorer dashboard.

``palette``, ``tables`` and ``figures`` are plain Python (no Streamlit import): colours,
derived tables and figure builders, unit-tested on their own. ``state`` (cached run
access, demo build), ``view`` (view state mirrored in the URL), ``auth`` (sign-in for
hosted use) and the pages' ``*_state`` modules (their cached work) talk to Streamlit.
"""

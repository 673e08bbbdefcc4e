"""What each niche is made of: cell-type enrichment, top markers, sizes."""

from explorer.startup import enter_page

enter_page("composition")  # before the heavy imports: see explorer.startup

import streamlit as st

from explorer import figures, state, tables, view
from explorer.palette import niche_colors

st.title("Niche composition")
current = view.current_run()
ref, keys = current.ref, current.keys

sizes = state.niche_sizes(ref)
colors = niche_colors(sizes.index)

st.subheader("Cell-type enrichment")
if keys.cell_type in current.run.adata.obs:
    st.plotly_chart(figures.enrichment_heatmap(state.cell_type_enrichment(ref)), key="enrichment")
    st.caption("log2 of a cell type's share in the niche over its share in the whole cohort: "
               "red = enriched, blue = depleted.")
else:
    st.info(f"This run has no cell-type column (`{keys.cell_type}`).")

left, right = st.columns(2)
with left:
    st.subheader("Top markers")
    scores, problem = None, None
    try:
        scores = state.markers(ref) if current.run.adata.n_vars else None
    except OSError as exc:  # the run's file gone since it was opened: a message, not a traceback
        problem = exc
    if problem is not None:
        st.error(f"The markers could not be read: {problem}")
    elif scores is not None:
        st.dataframe(tables.top_markers(scores, n_top=5)[["markers"]], width="stretch")
        st.caption("Mean z-scored expression per niche; the five highest per niche.")
        with st.expander("All markers"):
            st.plotly_chart(figures.marker_heatmap(scores), key="markers")
    else:
        st.info("This run has no expression matrix (`X`, with its genes or proteins in `var`) to find markers in.")
with right:
    st.subheader("Niche sizes")
    st.plotly_chart(figures.niche_size_figure(sizes, colors), key="sizes")
    # set widths: at the default ones the last column fell outside the half page
    st.dataframe(sizes.style.format({"fraction": "{:.1%}"}), width="stretch", column_config={
        "_index": st.column_config.TextColumn("niche", width=170),
        "cells": st.column_config.NumberColumn("cells", width=58),
        "fraction": st.column_config.NumberColumn("share", width=62,
                                                  help="share of all the cohort's cells"),
        "slides": st.column_config.NumberColumn("slides", width=52, help="slides where the niche is present"),
        "patients": st.column_config.NumberColumn("patients", width=64, help="patients where it is present"),
    })

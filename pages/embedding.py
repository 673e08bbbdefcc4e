"""Shared-embedding UMAP and how well samples or patients mix in it."""

from explorer.startup import enter_page

enter_page("embedding")  # before the heavy imports: see explorer.startup

import streamlit as st

from explorer import figures, select_state, state, tables, view
from explorer.palette import NUMERIC, niche_colors

st.title("Embedding")
current = view.current_run()
ref, keys = current.ref, current.keys
if keys.umap not in current.run.adata.obsm:
    st.warning(f"This run has no UMAP (`obsm['{keys.umap}']`); it was fitted without one.")
    st.stop()

# shown by the run's column names, as the niche maps' menu shows them
COLOR_COLUMNS = {"niche": keys.niche, "sample": keys.sample, "cell_type": keys.cell_type}
options = state.color_options(ref)
# other annotations of the cells (an expert's regions, a clinical group): by their column name
annotations = [c for c, kind in options.items() if kind != NUMERIC and c not in COLOR_COLUMNS
               and c not in (keys.niche, keys.sample, keys.cell_type)]
controls = st.columns([2, 2, 2])
with controls[0]:
    color_by = view.choice("color", "Colour by", [*COLOR_COLUMNS, *annotations], default="niche", what="colour",
                           per_page=True, format_func=lambda c: COLOR_COLUMNS.get(c, c),
                           help="The niche, the slide, the cell type, or another categorical column of the cells")
with controls[1]:
    highlighted = view.highlight(state.niches(ref))
with controls[2]:
    batch = view.choice("batch", "Mixing of", ["sample", "patient"], default="sample", what="batch",
                        per_page=True, help="Score how evenly these mix within each niche")

source_column = {"niche": keys.niche, "sample": keys.sample, "cell_type": keys.cell_type}.get(color_by, color_by)
if source_column not in options:  # e.g. a run without cell types
    st.warning(f"This run has no `{source_column}` column; colouring by niche.")
    color_by, source_column = "niche", keys.niche
points, n_cells = state.umap_points(ref, state.UMAP_POINT_BUDGET, None if color_by in COLOR_COLUMNS else color_by)
point_column = color_by if color_by in COLOR_COLUMNS else "color"
scale = state.scale(ref, source_column)

left, right = st.columns([3, 2])
with left:
    linked = select_state.current(ref)
    show_selection = bool(linked) and st.toggle(
        "Dim the cells outside the selection made on the Select cells page", value=True,
        key="embedding_selection")
    selected = select_state.on_umap(ref, state.UMAP_POINT_BUDGET, linked) if show_selection else None
    st.plotly_chart(figures.umap_figure(points, scale, color_column=point_column, highlight=highlighted,
                                        selected=selected, title=COLOR_COLUMNS.get(color_by, color_by)),
                    key="umap")
    if len(points) < n_cells:
        st.caption(f"Showing a random sample of {len(points):,} of {n_cells:,} cells.")
    st.page_link("pages/select.py", label="Select cells with a lasso and find them on the slides",
                 icon=":material/highlight_alt:")
with right:
    table, cohort, note = state.mixing(ref, batch)
    st.subheader(f"Batch mixing of {batch}s")
    st.metric("Cohort", "n/a" if cohort is None else f"{cohort:.2f}",
              help="1: every cell's neighbours in the embedding come from all "
                   f"{batch}s in their overall proportions; 0: only from its own {batch}.")
    colors = niche_colors(table.index)
    st.plotly_chart(figures.mixing_figure(table, colors, cohort=cohort), key="mixing")
    shown = table.assign(mixing=tables.number_text(table["mixing"], "{:.2f}", missing="n/a"))
    st.dataframe(shown[["mixing", "reading", *(c for c in shown.columns if c not in ("mixing", "reading"))]],
                 width="stretch")  # the score first: the sizes are on other pages too
    st.caption(f"Scores: {note}. A niche that is well mixed is shared across {batch}s; "
               f"a low score, or a single {batch}, marks a niche specific to one.")

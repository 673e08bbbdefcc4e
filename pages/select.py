"""Select cells: a lasso or box on the embedding or on a slide, shown in both, with its composition."""

from explorer.startup import enter_page

enter_page("select")  # before the heavy imports: see explorer.startup

import streamlit as st  # noqa: E402

from explorer import select, select_state, state, view  # noqa: E402
from explorer.palette import niche_colors  # noqa: E402

POINTS = 25_000
SEEN = "_select_seen"  # the last selection each chart reported, so that a redraw is not a new one
AGAINST = {"cohort": "the whole cohort", "slide": "the slide shown"}

st.title("Select cells")
current = view.current_run()
ref, keys = current.ref, current.keys
if keys.umap not in current.run.adata.obsm:
    st.warning(f"This run has no UMAP (`obsm['{keys.umap}']`); select cells on a slide instead.")
slides = state.samples(ref)

# ----------------------------------------------------------------------------- the selection
text = view.text("sel")
chosen = None
if text:
    try:
        chosen = select_state.parse(ref, text)
    except ValueError as exc:
        view.warn(f"The selection in the link cannot be used ({exc}); nothing is selected.")
        view.set_text("sel", None)
        text = None

seen = st.session_state.setdefault(SEEN, {})
for chart, space in (("select_umap", select.UMAP), ("select_slide", select.SLIDE)):
    event = st.session_state.get(chart)
    sample = st.session_state.get("_select_slide_shown")
    new = select.from_plotly_event(event, space=space, sample=sample)
    signature = select.to_text(new) if new else None
    if signature and signature != seen.get(chart) and signature != text:
        chosen, text = new, signature
        view.set_text("sel", text)
    seen[chart] = signature

controls = st.columns([3, 2, 1])
with controls[0]:
    default_slide = chosen.sample if chosen is not None and chosen.space == select.SLIDE else slides[0]
    slide = view.choice("slide", "Slide", slides, default=default_slide, what="slide", per_page=True)
    st.session_state["_select_slide_shown"] = slide
with controls[1]:
    against = view.choice("against", "Compare with", list(AGAINST), default="cohort", what="reference",
                          per_page=True, format_func=AGAINST.get)
with controls[2]:
    st.write("")
    if st.button("Clear selection", disabled=chosen is None, key="select_clear"):
        view.set_text("sel", None)
        st.rerun()

scale = state.scale(ref, keys.niche)
polygon_in = (lambda space, sample=None: chosen.polygon if chosen is not None and chosen.space == space
              and (sample is None or chosen.sample == sample) else None)

left, right = st.columns(2)
with left:
    st.markdown("**Embedding** (UMAP) · draw a lasso or a box")
    if keys.umap in current.run.adata.obsm:
        points, rows = select_state.umap_view(ref, state.UMAP_POINT_BUDGET)
        fig = select.scatter_figure(points, scale, selected=select_state.drawn_selection(ref, rows, text),
                                       title_x="UMAP 1", title_y="UMAP 2", equal_axes=True,
                                       polygon=polygon_in(select.UMAP))
        st.plotly_chart(fig, key="select_umap", on_select="rerun", selection_mode=("lasso", "box"))
with right:
    st.markdown(f"**Slide {slide}** · draw a lasso or a box")
    points, rows = select_state.slide_view(ref, slide, POINTS)
    fig = select.scatter_figure(points, scale, selected=select_state.drawn_selection(ref, rows, text),
                                   title_x="x", title_y="y", equal_axes=True, y_down=True,
                                   polygon=polygon_in(select.SLIDE, slide), show_legend=False)
    st.plotly_chart(fig, key="select_slide", on_select="rerun", selection_mode=("lasso", "box"))

if chosen is None:
    st.info("Draw a lasso or a box on either view (the toolbar's lasso and box tools; lasso is on by default): "
            "the cells inside are highlighted in both views, their niches and cell types are compared with "
            "the cohort's or the slide's, and they can be downloaded. The selection is kept in the page's "
            "address, so a copied link shows it.")
    st.stop()

# ----------------------------------------------------------------------------- what it holds
per_slide = select_state.slides_with_cells(ref, text)
n_selected = int(per_slide.sum())
cols = st.columns(3)
cols[0].metric("Selected cells", f"{n_selected:,}")
cols[1].metric("Slides", f"{len(per_slide):,}")
cols[2].metric("Share of the cohort", f"{n_selected / max(current.run.adata.n_obs, 1):.1%}")
st.caption(f"Selection: {chosen.describe()}. It selects every cell inside it, also those the views leave "
           f"out of their drawn sample. Slides: " + ", ".join(f"{s} ({n:,})" for s, n in per_slide.head(8).items())
           + ("…" if len(per_slide) > 8 else ""))
if n_selected == 0:
    st.info("No cell lies inside the selection.")
    st.stop()

reference = "the cohort" if against == "cohort" else f"slide {slide}"
colors = niche_colors(state.niches(ref))
tabs = st.columns(2)
for column_box, column, title in ((tabs[0], keys.niche, "Niches"), (tabs[1], keys.cell_type, "Cell types")):
    with column_box:
        st.subheader(title)
        if column not in current.run.adata.obs:
            st.info(f"This run has no `{column}` column.")
            continue
        table = select_state.composition(ref, text, column, against, slide)
        st.plotly_chart(select.composition_figure(table, column, reference=reference,
                                                     colors=colors if column == keys.niche else None),
                        key=f"select_comp_{title}")
        # short headers: the table shares half the page with the other one and would be cut off
        st.dataframe(table, hide_index=True, width="stretch", column_config={
            column: st.column_config.TextColumn(column, width=180),
            "selected": st.column_config.NumberColumn("cells", width=62),
            "selection_share": st.column_config.NumberColumn("selection", format="percent", width=70),
            "reference_share": st.column_config.NumberColumn(reference, format="percent", width=70),
            "ratio": st.column_config.NumberColumn("ratio", format="%.2f", width=56),
        })
        st.caption(f"Cells selected, and the share of cells in the selection and in {reference}; "
                   "ratio: the first share over the second.")
st.download_button(f"Download the {n_selected:,} selected cells (CSV)",
                   select_state.cells(ref, text).to_csv(index=False).encode(),
                   file_name=f"{ref.name}_select.csv", mime="text/csv", key="select_download")

"""Spatial niche maps: one to four slides side by side, coloured by any obs column."""

from explorer.startup import enter_page

enter_page("maps")  # before the heavy imports: see explorer.startup

import streamlit as st

from explorer import figures, select_state, state, view

MAX_MAPS = 4
BUDGETS = (10_000, 25_000, 50_000, 100_000)

st.title("Niche maps")
current = view.current_run()
ref, keys = current.ref, current.keys
slides = state.samples(ref)
options = state.color_options(ref)

controls = st.columns([3, 2, 2, 1])
with controls[0]:
    chosen = view.choices("slides", f"Slides (up to {MAX_MAPS})", slides, default=state.default_slides(ref),
                          what="slide", max_selections=MAX_MAPS, per_page=True)
with controls[1]:
    color_by = view.choice("color", "Colour by", list(options), default=keys.niche, what="colour column",
                           per_page=True)
with controls[2]:
    highlighted = view.highlight(state.niches(ref))
with controls[3]:
    budget = view.choice("points", "Points per map", BUDGETS, default=state.MAP_POINT_BUDGET,
                         what="point budget", per_page=True, format_func=lambda n: f"{n // 1000}k",
                         help="Larger slides show a random sample of this many cells")

if not chosen:
    st.info("Choose at least one slide.")
    st.stop()

linked = select_state.current(ref)
show_selection = bool(linked) and st.toggle(
    "Dim the cells outside the selection made on the Select cells page", value=True, key="maps_selection",
    help="Lasso or box on the embedding or a slide, on the Select cells page")

scale = state.scale(ref, color_by)
value_label = None if color_by in (keys.niche, keys.cell_type) else color_by
present = set()
notes = []
columns = st.columns(len(chosen))
# the main column is ~900 px on a laptop screen; a slightly small guess keeps slides uncropped
width_px = int(880 / len(chosen)) - 16
height_px = {1: 560, 2: 480, 3: 400, 4: 340}[len(chosen)]
slides = {sample: state.map_points(ref, sample, color_by, budget) for sample in chosen}
frame = figures.shared_frame([points for points, _ in slides.values()], width_px, height_px)  # one scale
for column, (sample, (points, n_cells)) in zip(columns, slides.items()):
    if not scale.is_numeric:
        present.update(points["value"].unique())
    selected = select_state.on_map(ref, sample, budget, linked) if show_selection else None
    deck = figures.niche_map_deck(points, scale, highlight=highlighted, sample=sample,
                                  width_px=width_px, height_px=height_px, value_label=value_label,
                                  selected=selected, frame=frame)
    with column:
        st.markdown(f"**{sample}** · {n_cells:,} cells")
        st.pydeck_chart(deck, height=height_px, key=f"map_{sample}")
    if len(points) < n_cells:
        notes.append(f"{sample}: {len(points):,} of {n_cells:,}")

st.markdown(figures.legend_html(scale, highlight=highlighted, present=present or None),
            unsafe_allow_html=True)
bar = ("The slides are drawn to one scale; the bar under each is as long as the number under it, in the unit "
       f"of the coordinates (`obsm['{keys.spatial}']`: µm for most instruments, pixels for some).")
if notes:
    st.caption(f"Large slides are drawn from a random sample of {budget:,} cells per map "
               f"(keeps the page responsive): {'; '.join(notes)} cells shown. {bar}")
else:
    st.caption(f"Every cell is drawn. Scroll to zoom, drag to pan, hover a cell for details. {bar}")

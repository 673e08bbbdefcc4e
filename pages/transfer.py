"""Label transfer: annotate a new slide from the selected run, and show what is unknown."""

from explorer.startup import enter_page

enter_page("transfer")  # before the heavy imports: see explorer.startup

from pathlib import Path

import streamlit as st

from cellniche_core.agreement import describe_agreement
from cellniche_core.io import CohortError
from cellniche_core.keys import Keys
from cellniche_core.transfer import TRANSFER_UNS_KEY, describe_alignment
from explorer import figures, state, tables, transfer, transfer_state, view

UPLOAD = "upload"
NO_TRUTH = ""
MAP_POINTS = 25_000

st.title("Label transfer")
current = view.current_run()
ref, keys = current.ref, current.keys
st.caption(
    f"Reference atlas: run **{ref.name}** (pick another in the sidebar). The query is embedded by the "
    "run's frozen encoder, its features aligned to the reference's; each query cell takes the label voted for "
    "by its 30 nearest reference cells in the embedding, its 30 nearest in the neighbourhood-averaged "
    "inputs and, when the reference holds several patients or slides, its 30 nearest along the directions of "
    "those inputs that tell the reference's labels apart, each alike; the vote is cast again with each slide's "
    "shift from the reference (measured label by label) taken off. It is called **unknown** when its "
    "neighbourhood-averaged inputs lie farther from the reference than those of 99 % of reference cells seen "
    "from other patients (averaged with its spatial neighbours). A far region also takes in its edge: the "
    "cells joined to it whose inputs, at the coarse scales and at the finest, are farther than 95 % of those "
    "reference cells. A cell whose voters split between known labels keeps the label most of them hold; "
    "the Confidence map shows where the vote split.")

labels_offered = transfer.label_options(state.color_options(ref), keys)
files = transfer.query_files(transfer_state.data_dir())
pick = st.columns([2, 3])
with pick[0]:
    label_key = view.choice("label", "Label to transfer", labels_offered, default=keys.niche,
                            what="label column", per_page=True,
                            help="A categorical column of the reference: its niches, or an expert annotation")
with pick[1]:
    offered = transfer.query_choices(files, UPLOAD)  # the demo's held-out patient first
    source = view.choice("query", "Query", offered, default=offered[0], what="query file", per_page=True,
                         format_func=lambda v: "— upload an .h5ad file —" if v == UPLOAD else f"data/{v}",
                         help=f".h5ad files in {transfer_state.data_dir()}, or an upload")

data = None
if source == UPLOAD:
    uploaded = st.file_uploader("Query slide(s)", type=["h5ad"],
                                help="An AnnData with obsm['spatial'] and the reference's cell-type column "
                                     "or genes; several slides are told apart by the reference's slide column")
    if uploaded is None:
        st.info("Upload a query .h5ad file, or choose a file under data/ above.")
        st.stop()
    data = uploaded.getvalue()
    query = transfer_state.upload_query(uploaded.name, data)
else:
    query = transfer_state.file_query(source, files[source])

try:
    adata, report = transfer_state.annotated(ref, query, label_key, str(transfer_state.upload_dir()), _data=data)
except (CohortError, FileNotFoundError, ValueError, RuntimeError) as exc:
    st.error(f"**{query.name}** could not be annotated: {exc}")
    st.stop()
except Exception as exc:  # a bad file is a message, never a traceback
    st.error(f"**{query.name}** could not be annotated: {type(exc).__name__}: {exc}")
    st.stop()

# ----------------------------------------------------------------------------- summary
for column, (label, value) in zip(st.columns(4), transfer.summary_metrics(report, adata, keys).items()):
    column.metric(label, value)
alignment = describe_alignment(report["alignment"])
if alignment:
    st.warning("Feature alignment: " + "; ".join(alignment) + ".")
else:
    st.caption("Feature alignment: the query has every reference feature and nothing extra.")
params = adata.uns[TRANSFER_UNS_KEY]["params"]
st.caption(transfer.unknown_note(report, quantile=params["quantile"],
                                 min_confidence=params.get("min_confidence", 0.0)))

# ----------------------------------------------------------------------------- maps
reference_scale = state.scale(ref, label_key)
transferred = transfer.transferred_scale(reference_scale)
ref_slides = state.samples(ref)
query_slides = transfer.query_slides(adata, keys)
cols = st.columns(3)
with cols[0]:
    ref_slide = view.choice("rslide", "Reference slide", ref_slides, default=ref_slides[0], what="slide",
                            per_page=True)
with cols[1]:
    query_slide = view.choice("qslide", "Query slide", query_slides, default=query_slides[0],
                              what="query slide", per_page=True)

maps = st.columns(3)
ref_points, ref_cells = state.map_points(ref, ref_slide, label_key, MAP_POINTS)
query_maps = [(transfer_state.map_points(ref, query, label_key, query_slide, colour_by, MAP_POINTS, _adata=adata),
               colour_by, scale, title, tag) for colour_by, scale, title, tag in (
    (Keys.TRANSFERRED, transferred, "Transferred label", "labels"),
    (Keys.CONFIDENCE, transfer.confidence_scale(), "Confidence", "confidence"))]
frame = figures.shared_frame([ref_points, query_maps[0][0][0]], 300, 340)  # reference and query to one scale
with maps[0]:
    st.markdown(f"**Reference** · {ref_slide} · {ref_cells:,} cells")
    st.pydeck_chart(figures.niche_map_deck(ref_points, reference_scale, sample=ref_slide, width_px=300,
                                           height_px=340, value_label=None if label_key == keys.niche
                                           else label_key, frame=frame), height=340, key="transfer_reference_map")
for column, ((points, n_cells), colour_by, scale, title, tag) in zip(maps[1:], query_maps):
    with column:
        st.markdown(f"**{title}** · {query_slide} · {n_cells:,} cells")
        st.pydeck_chart(figures.niche_map_deck(points, scale, sample=query_slide, width_px=300, height_px=340,
                                               value_label=colour_by, frame=frame),
                        height=340, key=f"transfer_{tag}_map")
st.markdown(figures.legend_html(transferred), unsafe_allow_html=True)
st.markdown(transfer.confidence_legend_html(), unsafe_allow_html=True)
st.caption("The reference and the query are drawn to one scale: the bar under each slide is as long as the number "
           "under it, in the unit of the coordinates.")

# ----------------------------------------------------------------------------- composition
st.subheader("Composition: query against reference")
table = transfer_state.label_table(ref, query, label_key, _adata=adata)
st.plotly_chart(transfer.composition_figure(table, transferred), key="transfer_composition")
shown = table.assign(  # a label no query cell got has no mean confidence: "–", not "None"
    mean_confidence=tables.number_text(table["mean_confidence"], "{:.2f}"))
st.dataframe(shown.style.format({"reference_share": "{:.1%}", "query_share": "{:.1%}"}),
             hide_index=True, width="stretch")
st.caption("Share of each label among the reference's cells and the query's; a label the query lacks, or a "
           "large unknown share, is where the new slide differs from the atlas.")

# ----------------------------------------------------------------------------- the query's own labels
st.subheader("Agreement with the query's own labels")
own_options = transfer.truth_options(adata, keys)
if not own_options:
    st.caption("The query holds no labels of its own to compare with (a categorical obs column named as the "
               "reference's labels, such as an expert annotation, is scored here).")
else:
    truth_key = view.choice("own", "Compare with the query's column", [NO_TRUTH, *own_options],
                            default=label_key if label_key in own_options else NO_TRUTH, what="query column",
                            per_page=True, format_func=lambda v: "— none —" if v == NO_TRUTH else v,
                            help="The query's own labels, named as the reference's: how often the transferred "
                                 "label agrees with them, and how much of what the reference lacks is unknown")
    if truth_key == NO_TRUTH:
        st.caption(f"Pick a column of the query that holds its own labels, named as the reference's "
                   f"{label_key!r}, to score the transfer against it.")
    else:
        try:
            agreement = transfer_state.agreement(ref, query, label_key, truth_key, _adata=adata)
        except CohortError as exc:
            st.warning(f"Cannot compare with obs[{truth_key!r}]: {exc}")
        else:
            said = " ".join(line[0].upper() + line[1:] + "." for line in describe_agreement(agreement))
            if agreement["n_known"]:
                for column, (name, value) in zip(st.columns(3), transfer.agreement_metrics(agreement).items()):
                    column.metric(name, value)
                st.caption(said)
            else:  # no name in common: figures would read as a missed unseen region
                st.info(said + " The heatmap shows how the two sets of labels correspond.")
            st.plotly_chart(transfer.agreement_figure(agreement["confusion"]), key="transfer_agreement")
            st.dataframe(transfer.agreement_table(agreement["per_label"]), hide_index=True, width="stretch",
                         column_config={"in_reference": st.column_config.CheckboxColumn("in reference"),
                                        "unknown": st.column_config.NumberColumn(format="percent"),
                                        "most_called": st.column_config.TextColumn("most often called")})

st.download_button(
    "Download the annotated query (.h5ad)",
    transfer_state.download_bytes(ref, query, label_key, str(transfer_state.upload_dir()), _adata=adata),
    file_name=f"{Path(query.name).stem}_transferred.h5ad", mime="application/x-hdf5",
    help="The query with obs['transferred_label'], obs['transfer_confidence'], obs['transfer_distance'], "
         "obsm['X_cellniche'] and uns['cellniche_transfer']")

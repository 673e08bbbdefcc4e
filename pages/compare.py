"""Cohort comparison: conserved vs sample-specific niches, group differences, two patients, transition zones."""

from explorer.startup import enter_page

enter_page("compare")  # before the heavy imports: see explorer.startup

import streamlit as st

from explorer import compare, compare_state, figures, state, tables, view
from explorer.palette import niche_colors

NO_GROUP = "none"
MAP_POINTS = 25_000


def download(table, name: str, label: str = "Download CSV") -> None:
    st.download_button(label, table.to_csv(index=False).encode(), file_name=f"{ref.name}_{name}.csv",
                       mime="text/csv", key=f"download_{name}")


st.title("Cohort comparison")
current = view.current_run()
ref, keys = current.ref, current.keys
clinical = state.summary(ref)["clinical"]
niche_names = state.niches(ref)
colors = niche_colors(niche_names)

group = view.choice("group", "Compare patient groups by", [NO_GROUP, *clinical],
                    default=clinical[0] if clinical else NO_GROUP, what="group column", per_page=True,
                    format_func=lambda v: "— no grouping —" if v == NO_GROUP else v,
                    help="A clinical column with one value per patient, e.g. response")
group_key = None if group == NO_GROUP else group

# ----------------------------------------------------------------- conserved vs specific
st.subheader("Conserved vs sample-specific niches")
summary = compare_state.niche_summary(ref, group_key)
matrix = compare.abundance_matrix(compare_state.patient_abundance(ref), niche_names)
patterns = dict(zip(summary["niche"], summary["pattern"]))
st.plotly_chart(compare.abundance_heatmap(matrix, patterns), key="abundance_heatmap")
shown = summary.drop(columns=["n_samples", "n_patients"])
st.dataframe(shown, hide_index=True, width="stretch", column_config={
    "share": st.column_config.NumberColumn("share of all cells", format="percent"),  # pooled, not per patient
    "abundance": st.column_config.NumberColumn("abundance (mean over patients)", format="percent"),
    "abundance_ci_low": st.column_config.NumberColumn("95 % CI low", format="percent"),
    "abundance_ci_high": st.column_config.NumberColumn("95 % CI high", format="percent"),
    "evenness": st.column_config.NumberColumn(format="%.2f"),
    "dominant_sample_share": st.column_config.NumberColumn(format="percent"),
    "dominant_patient_share": st.column_config.NumberColumn(format="percent"),
})
n_patients = int(summary["n_patients"].iloc[0])
st.caption(
    f"A niche is present in a slide when it holds at least 10 cells and 1 % of the slide. "
    f"conserved: present in at least ⅔ of the {n_patients} patients with even abundance (evenness ≥ 0.5); "
    "variable: as many patients, uneven; sample-specific: one patient, or ≥ 90 % of its size-adjusted "
    "abundance in one; group-enriched: only in patients of one group; partial: several patients, fewer "
    "than ⅔; rare: present nowhere. Intervals: 1,000 bootstrap resamples of the patients.")
download(summary, "niches")

# ----------------------------------------------------------------------- group differences
st.subheader("Group differences")
if group_key is None:
    st.info("Choose a clinical column above to compare patient groups." if clinical else
            "This run has no clinical column with one value per patient to compare groups by.")
else:
    try:
        tests = compare_state.group_tests(ref, group_key)
    except ValueError as exc:
        st.info(f"No group test: {exc}")
    else:
        hits = tests.loc[tests["significant"], "niche"].tolist()
        st.plotly_chart(compare.group_difference_figure(tests), key="group_difference")
        percent = {c: st.column_config.NumberColumn(format="percent")  # shares in %, as the chart
                   for c in tests.columns if c.startswith("mean_")}
        # the test (in the caption) and a single comparison (the chart's axis) are not repeated on every row
        same = [c for c in ("test", "comparison") if tests[c].nunique() == 1]
        first = ["niche", "enriched_in", "effect", "effect_ci_low", "effect_ci_high", "q_value", "significant"]
        order = [*first, *(c for c in tests.columns if c not in first)]  # the finding before the statistics
        st.dataframe(tests, hide_index=True, width="stretch",
                     column_order=[c for c in order if c not in same], column_config={
            # which mean is higher, not a finding: whether it differs is `significant`
            "enriched_in": st.column_config.TextColumn("higher mean in"),
            "effect": st.column_config.NumberColumn(format="percent"),
            "effect_ci_low": st.column_config.NumberColumn(format="percent"),
            "effect_ci_high": st.column_config.NumberColumn(format="percent"),
            "p_value": st.column_config.NumberColumn(format="%.2g"),
            "q_value": st.column_config.NumberColumn(format="%.2g"),
            **percent,
        })
        st.caption(f"{tests['test'].iloc[0]} per niche with the patient as the unit (one abundance per "
                   "patient, slides pooled); effect in percentage points; q = Benjamini–Hochberg across niches; "
                   "red = q < 0.05; 'higher mean in' names the group with the higher mean whether or not it "
                   "differs. Intervals: 95 % bootstrap over the patients of each group, not adjusted for the "
                   "number of niches: one that just clears 0 is no finding unless q says so. "
                   + (f"Different between groups: {', '.join(hits)}." if hits else
                      "No niche differs significantly between groups."))
        download(tests, "group_tests")

# ------------------------------------------------------------------------ patient vs patient
st.subheader("Patient vs patient")
slides_of = compare_state.patients_by_slide(ref)
patients = list(slides_of)
if len(patients) < 2:
    st.info("This run has a single patient.")
else:
    pick = st.columns(3)
    with pick[0]:
        patient_a = view.choice("pa", "Patient A", patients, default=patients[0], what="patient", per_page=True)
    with pick[1]:
        others = [p for p in patients if p != patient_a]
        patient_b = view.choice("pb", "Patient B", others, default=others[0], what="patient", per_page=True)
    with pick[2]:
        highlighted = view.highlight(niche_names)
    scale = state.scale(ref, keys.niche)
    maps, shown = st.columns(2), []
    for column, patient, tag in zip(maps, (patient_a, patient_b), ("a", "b")):
        with column:
            slides = slides_of[patient]
            if len(slides) > 1:
                slide = view.choice(f"slide_{tag}", f"Slide of {patient}", slides, default=slides[0],
                                    what="slide", per_page=True)
            else:  # shown all the same, so that the two maps start level
                slide = st.selectbox(f"Slide of {patient}", slides, disabled=True, key=f"one_slide_{tag}",
                                     help=f"{patient} has one slide")
            shown.append((patient, slide, *state.map_points(ref, slide, keys.niche, MAP_POINTS)))
    frame = figures.shared_frame([points for _, _, points, _ in shown], 420, 380)  # both to one scale
    for column, (patient, slide, points, n_cells), tag in zip(maps, shown, ("a", "b")):
        with column:
            st.markdown(f"**{patient}** · {slide} · {n_cells:,} cells")
            st.pydeck_chart(figures.niche_map_deck(points, scale, highlight=highlighted, sample=slide,
                                                   width_px=420, height_px=380, frame=frame),
                            height=380, key=f"pair_map_{tag}")
    st.markdown(figures.legend_html(scale, highlight=highlighted), unsafe_allow_html=True)
    st.caption("Both slides are drawn to one scale: the bar under each is as long as the number under it, in "
               "the unit of the coordinates.")
    pair = compare_state.patient_pair(ref, patient_a, patient_b)
    st.plotly_chart(compare.patient_difference_figure(pair, colors, patient_a=patient_a,
                                                         patient_b=patient_b), key="pair_difference")
    shown = pair.rename(columns={"n_cells_a": f"cells {patient_a}", "n_cells_b": f"cells {patient_b}",
                                 "abundance_a": patient_a, "abundance_b": patient_b})
    shown["log2_ratio"] = tables.number_text(shown["log2_ratio"], "{:+.2f}")  # none where neither has the niche
    st.dataframe(shown.style.format(  # shares in %, as the chart
        {patient_a: "{:.1%}", patient_b: "{:.1%}", "difference": "{:+.1%}", "cohort_mean": "{:.1%}",
         "cohort_sd": "{:.1%}"}), hide_index=True, width="stretch")
    st.caption("Abundance = share of the patient's cells (all its slides); difference in percentage points; "
               "log2_ratio: none where the niche is present in neither patient. No p-value: with one patient "
               "on each side there is nothing to replicate; compare a difference with cohort_sd.")
    download(pair, f"{patient_a}_vs_{patient_b}")

# ------------------------------------------------------------------------- transition zones
st.subheader("Transition zones")
all_slides = state.samples(ref)
left, right = st.columns([3, 2])
with left:
    slide = view.choice("tslide", "Slide", all_slides, default=all_slides[0], what="slide", per_page=True)
    points, n_cells = compare_state.transition_points(ref, slide, MAP_POINTS)
    st.pydeck_chart(figures.niche_map_deck(points, compare.MIXING_SCALE, sample=slide, width_px=540,
                                           height_px=460), height=460, key="transition_map")
    st.markdown(compare.mixing_legend_html(), unsafe_allow_html=True)
    st.caption(f"Border cells (at least {compare_state.BORDER_THRESHOLD:.0%} of their spatial neighbours in "
               "other niches) coloured by how mixed their neighbourhood is (normalised entropy of the "
               "neighbours' niches); grey: inside a niche. Graph: the one the run was trained on.")
with right:
    transitions = compare_state.transition_summary(ref)
    st.dataframe(transitions, hide_index=True, width="stretch", column_config={
        "border_fraction": st.column_config.NumberColumn(format="percent"),
        "mean_mixing": st.column_config.NumberColumn(format="%.2f"),
        "mean_frac_other": st.column_config.NumberColumn(format="%.2f"),
    })
    download(transitions, "transitions")
per_slide, cohort_adjacency = compare_state.adjacency(ref)
st.plotly_chart(compare.adjacency_heatmap(cohort_adjacency, niche_names), key="adjacency_heatmap")
st.caption("Which niches border which: of the spatial-graph edges that cross a niche boundary, the share "
           "joining two niches over the share their sizes predict (log2, summed over slides). Red = they "
           "border each other more than expected. The tables also compare every count with a random "
           "arrangement of the same cells (exact permutation mean and variance): neighbouring cells share "
           "niches, so those z-scores are large in any tissue.")
with st.expander("Adjacency tables"):
    st.dataframe(cohort_adjacency, hide_index=True, width="stretch")
    download(cohort_adjacency, "adjacency_cohort", "Download cohort table")
    st.dataframe(per_slide, hide_index=True, width="stretch")
    download(per_slide, "adjacency", "Download per-slide table")

"""Cohort overview: patients, slides, cells, niches, clinical columns, niche abundance per slide."""

from explorer.startup import enter_page

enter_page("overview")  # before the heavy imports: see explorer.startup

import streamlit as st

from explorer import figures, state, view
from explorer.palette import niche_colors

from cellniche_core.features import FeatureSpec, describe_inputs
from cellniche_core.scale import scale_lines

st.title("Cohort overview")
current = view.current_run()
ref = current.ref
info = state.summary(ref)

cols = st.columns(4)
cols[0].metric("Patients", f"{info['n_patients']:,}")
cols[1].metric("Slides", f"{info['n_slides']:,}")
cols[2].metric("Cells", f"{info['n_cells']:,}")
cols[3].metric("Niches", f"{info['n_niches']:,}")

clinical = info["clinical"]
st.caption("Clinical columns: " + (", ".join(f"`{c}`" for c in clinical) if clinical else "none found")
           + f" · run folder `{ref.name}`")

left, right = st.columns([3, 2])
with left:
    st.subheader("Niche abundance per slide")
    fractions = state.abundance(ref)
    colors = niche_colors(fractions.columns)
    st.plotly_chart(figures.abundance_figure(fractions, colors), key="abundance")
with right:
    st.subheader("Patients")
    st.dataframe(state.patient_table(ref), width="stretch")
    manifest = current.run.manifest
    with st.expander("Run details"):
        truth = (manifest.get("metrics") or {}).get("vs_true_niche")
        lines = [f"- niches: {manifest.get('n_niches')} ({manifest.get('niche_rule', 'n/a')})",
                 f"- encoder input: {manifest.get('features', 'n/a')}, "
                 f"{describe_inputs(FeatureSpec.from_dict(current.run.model_config['features']))}",
                 f"- device: {manifest.get('device', 'n/a')}, seed {manifest.get('seed', 'n/a')}",
                 f"- created: {manifest.get('created', 'n/a')}"]
        if truth:
            lines.append(f"- agreement with planted niches: ARI {truth['ari']:.2f}, NMI {truth['nmi']:.2f}")
        lines += [f"- {line}" for line in scale_lines(manifest.get("scale"))]
        timings = manifest.get("timings_s") or {}
        if timings:
            lines.append("- timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
        st.markdown("\n".join(lines))

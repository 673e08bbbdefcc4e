"""Niche names: the automatic names, and renaming niches for everyone who opens the run."""

from explorer.startup import enter_page

enter_page("names")  # before the heavy imports: see explorer.startup

import streamlit as st  # noqa: E402

from cellniche_core.names import MAX_NAME, NamesError, parse_names_csv  # noqa: E402
from explorer import state, view  # noqa: E402

SAVED = "_names_saved"

st.title("Niche names")
current = view.current_run()
ref = current.ref
table = state.niche_names_table(ref)
st.caption(
    "Each niche is shown as its id and a name, in every table, legend, map tooltip and download. The automatic "
    "name lists the cell types most enriched in the niche (at least twice their share in the cohort and 5 % of "
    "the niche), or its top markers in a run without cell types. Type a name to replace it; clear it to go back. "
    f"Names are saved with run **{ref.name}** (`niche_names.json` in its folder), so whoever opens the run, or a "
    "link to it, sees them.")
if SAVED in st.session_state:
    st.success(st.session_state.pop(SAVED))

with st.form(f"names_form_{ref.name}_{ref.names_stamp}", border=False):
    head = st.columns([1, 4, 4])
    head[0].markdown("**niche**")
    head[1].markdown("**automatic name**")
    head[2].markdown("**your name**")
    names = {}
    for row in table.itertuples(index=False):
        cols = st.columns([1, 4, 4], vertical_alignment="center")
        cols[0].markdown(f"**{row.niche}**")
        cols[1].markdown(row.auto_name or "—")
        names[row.niche] = cols[2].text_input(f"Name of {row.niche}", value=row.name, max_chars=MAX_NAME,
                                              placeholder=row.auto_name, label_visibility="collapsed",
                                              key=f"name_{ref.name}_{ref.names_stamp}_{row.niche}")
    submitted = st.form_submit_button("Save names", type="primary")
if submitted:
    if names == dict(zip(table["niche"], table["name"])):
        st.info("No name was changed.")
    else:
        try:
            state.save_niche_names(ref, names)
        except (NamesError, OSError) as exc:
            st.error(f"The names were not saved: {exc}")
        else:
            st.session_state[SAVED] = f"Saved the names of run {ref.name}."
            st.rerun()

with st.expander("Set names from a CSV file"):
    upload = st.file_uploader("CSV with the header niche,name", type=["csv"], key=f"names_csv_{ref.name}",
                              help="The file the download below gives; niches not listed keep their names")
    if upload is not None and st.button("Use these names", key="names_csv_apply"):
        try:
            given = parse_names_csv(upload.getvalue().decode("utf-8", errors="replace"), table["niche"].tolist(),
                                    source=upload.name)
            state.save_niche_names(ref, {**dict(zip(table["niche"], table["name"])), **given})
        except (NamesError, OSError) as exc:
            st.error(f"The names were not saved: {exc}")
        else:
            st.session_state[SAVED] = f"Saved {len(given)} name(s) from {upload.name} for run {ref.name}."
            st.rerun()

st.dataframe(table[["label"]].rename(columns={"label": "shown as"}), hide_index=True, width="stretch")
csv_table = table[["niche", "name", "auto_name"]].rename(columns={"auto_name": "automatic_name"})
st.download_button("Download names (CSV)", csv_table.to_csv(index=False).encode(),
                   file_name=f"{ref.name}_niche_names.csv", mime="text/csv", key="names_download",
                   help="niche, the name given (empty: the automatic name is shown), and the automatic name; "
                        "fill in the name column and upload it above, or give it to "
                        "`python -m cellniche_core names RUN --from FILE`")

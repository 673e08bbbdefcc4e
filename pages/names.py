"""Niche names: the automatic names, and renaming niches for everyone who opens the run."""

from explorer.startup import enter_page

enter_page("names")  # before the heavy imports: see explorer.startup

import streamlit as st  # noqa: E402

from cellniche_core.names import MAX_NAME, NamesError  # noqa: E402
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

edited = st.data_editor(
    table[["niche", "auto_name", "name"]], hide_index=True, width="stretch", disabled=["niche", "auto_name"],
    key=f"names_editor_{ref.name}_{ref.names_stamp}",
    column_config={"niche": st.column_config.TextColumn("niche", width="small"),
                   "auto_name": st.column_config.TextColumn("automatic name"),
                   "name": st.column_config.TextColumn("your name", max_chars=MAX_NAME,
                                                       help="Empty: the automatic name")})
names = {n: (v if isinstance(v, str) else "") for n, v in zip(edited["niche"], edited["name"])}
changed = names != dict(zip(table["niche"], table["name"]))
if st.button("Save names", type="primary", disabled=not changed, key="names_save"):
    try:
        state.save_niche_names(ref, names)
    except (NamesError, OSError) as exc:
        st.error(f"The names were not saved: {exc}")
    else:
        st.session_state[SAVED] = f"Saved the names of run {ref.name}."
        st.rerun()

st.dataframe(table[["label"]].rename(columns={"label": "shown as"}), hide_index=True, width="stretch")
st.download_button("Download names (CSV)", table[["niche", "name"]].to_csv(index=False).encode(),
                   file_name=f"{ref.name}_niche_names.csv", mime="text/csv", key="names_download",
                   help="The file `python -m cellniche_core names RUN --from FILE` reads")

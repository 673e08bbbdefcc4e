"""CellNiche Explorer: compare tumour microenvironments ("niches") across a cohort.

Run with ``streamlit run app.py``. Runs are listed from ``$CELLNICHE_RUNS_DIR`` (default
``data/runs``); when there is none, the demo run is built once and kept on disk. Hosted, it
asks for a password or a single sign-on first when one is configured (``explorer/auth.py``).
"""

import streamlit as st

st.set_page_config(page_title="CellNiche Explorer", page_icon=":material/hub:", layout="wide")

# light imports only until the title and the navigation are on screen: the library takes
# seconds to import on a fresh server
from explorer import auth, startup  # noqa: E402  (set_page_config must come first)

PAGES = {
    "overview": st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    "maps": st.Page("pages/maps.py", title="Niche maps", icon=":material/map:", url_path="maps"),
    "embedding": st.Page("pages/embedding.py", title="Embedding", icon=":material/scatter_plot:",
                         url_path="embedding"),
    "select": st.Page("pages/select.py", title="Select cells", icon=":material/highlight_alt:",
                      url_path="select"),
    "composition": st.Page("pages/composition.py", title="Niche composition", icon=":material/grid_on:",
                           url_path="composition"),
    "names": st.Page("pages/names.py", title="Niche names", icon=":material/edit_note:", url_path="names"),
    "compare": st.Page("pages/compare.py", title="Cohort comparison", icon=":material/compare_arrows:",
                       url_path="compare"),
    "transfer": st.Page("pages/transfer.py", title="Label transfer", icon=":material/label:",
                        url_path="transfer"),
    "train": st.Page("pages/train.py", title="Train a run", icon=":material/model_training:",
                     url_path="train"),
}

startup.preload_library()  # in the background: the first page needs it seconds from now

# signed out (hosted use): the sign-in form alone, no page names, runs or content
access = auth.access()
page = st.navigation(list(PAGES.values()), position="sidebar" if access.allowed else "hidden")
auth.gate(access)
st.sidebar.markdown("### CellNiche Explorer")
auth.sign_out_button(access)
directory = startup.runs_dir()
if not startup.has_runs(directory):
    startup.wait_for_demo(directory)  # title and progress bar; reruns once the demo run exists

if startup.library_ready():
    from explorer import state, view
else:  # the first run of this server process: the library takes seconds to import, once
    placeholder = st.empty()
    # a deep link on a fresh server arrives here first and is switched to its page after the import
    coming = PAGES.get(st.session_state.get(startup.GOTO) or st.query_params.get("page"), page)
    with placeholder.container():
        st.title(coming.title)
        with st.spinner("Loading the library (once, when the server starts)…"):
            from explorer import state, view
    placeholder.empty()

page_name = next(name for name, p in PAGES.items() if p is page)
view.start(page_name, PAGES)
view.select_run(state.find_runs(directory))

page.run()

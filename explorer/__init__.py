"""Helpers of the CellNiche Explorer dashboard, in two layers with one naming rule.

**Plain modules** (no Streamlit import; unit-tested on their own) build tables, figures and
files from a loaded run. **``*_state`` modules** wrap them for Streamlit: cached
(``st.cache_data`` / ``st.cache_resource``), keyed by the run, reading only their arguments.

A page ``pages/<name>.py`` finds its helpers in ``explorer/<name>.py`` (plain) and
``explorer/<name>_state.py`` (cached):

=================  ==========================  ========================================
page               plain                        cached (Streamlit)
=================  ==========================  ========================================
overview, maps,    ``tables``, ``figures``,     ``state`` (run list, loading with the
embedding,         ``palette``                  niches' names, every cached run-wide
composition,                                    table)
names
select             ``select``                   ``select_state``
compare            ``compare``                  ``compare_state``
transfer           ``transfer``                 ``transfer_state``
train              ``train``, ``job_queue``     ``train_state``
=================  ==========================  ========================================

``startup`` is what ``app.py`` draws before the library is imported (Streamlit and the
standard library only): the page's title, and the demo run's build in a child process with
its progress bar. Shared by several pages: ``uploads`` (uploaded files, staged only inside the uploads
folder; plain), ``view`` (the view state mirrored in the URL; Streamlit), ``auth`` (sign-in
for hosted use; Streamlit) and ``imagecheck`` (counting colours in a screenshot, for tests).
"""

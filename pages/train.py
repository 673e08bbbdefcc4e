"""Train a run: upload a cohort, pick its columns and settings, and train it in the background."""

from __future__ import annotations

from explorer.startup import enter_page

enter_page("train")  # before the heavy imports: see explorer.startup

import streamlit as st

from cellniche_core.keys import CohortKeys, Keys
from explorer import job_queue, state, train, train_state, view
from explorer.job_queue import Job
from explorer.uploads import Upload

#: seconds between two refreshes of a running job's progress
POLL_S = 1.0
FEATURE_LABELS = {"auto": "auto (cell types when there is a cell-type column, else expression)",
                  "pheno": "cell types (pheno)", "expr": "expression (expr)",
                  "pheno_expr": "cell types and expression (pheno_expr)"}

st.title("Train a run")
registry = train_state.registry()
train_state.clean_uploads(str(train_state.uploads_dir()))
session = train_state.session_id()
upload_limit_mb = st.get_option("server.maxUploadSize")
st.caption(
    f"Upload a cohort as one or more AnnData `.h5ad` files (at most {upload_limit_mb:,} MB each), choose "
    "its columns and settings, and train a new run into the server's runs folder. Training runs on the server "
    f"in the background, {job_queue.MAX_RUNNING} job at a time; later jobs wait in a queue of at most "
    f"{job_queue.MAX_WAITING}. Uploaded files are only read: a copy is kept while a job trains and deleted "
    "when it ends.")


# ----------------------------------------------------------------------------- jobs


def open_run(name: str) -> None:
    view.show_run(name)
    st.switch_page("pages/overview.py")


def show_finished(job: Job) -> None:
    text, buttons = st.columns([5, 1])
    with text:
        if job.status == job_queue.DONE:
            st.success(f"Run **{job.run_name}** is ready: trained in {job.seconds:.0f} s.")
            if job.cancel_requested:
                st.caption(f"Not cancelled: {job.message}.")
        elif job.status == job_queue.FAILED:
            st.error(f"Training **{job.run_name}** failed: {job.error}")
        else:
            st.info(f"Training **{job.run_name}** was {job.message}.")
    with buttons:
        if job.status == job_queue.DONE and st.button("Open run", key=f"train_open_{job.id}", type="primary"):
            open_run(job.run_name)
        st.button("Dismiss", key=f"train_dismiss_{job.id}", on_click=registry.dismiss, args=(session, job.id))


def show_active(job: Job) -> None:
    text, button = st.columns([5, 1])
    with text:
        if job.status == job_queue.QUEUED:
            st.info(f"**{job.run_name}** waits for a free training slot: number {registry.position(job)} in "
                    f"the queue ({registry.running()} job(s) training now).")
        else:
            st.progress(job.progress, text=f"**{job.run_name}** · {job.stage or 'starting'}: {job.message} "
                                           f"· {job.seconds:.0f} s")
    with button:
        st.button("Cancel", key=f"train_cancel_{job.id}", disabled=job.cancel_requested,
                  on_click=registry.cancel, args=(session, job.id),
                  help="Stop at the next training step; nothing is written")


def active_jobs() -> None:
    jobs = [j for j in registry.jobs(session) if j.active]
    if not jobs:  # finished since the last refresh: redraw the page and the sidebar's run list
        st.rerun()
    for job in jobs:
        show_active(job)


jobs = registry.jobs(session)
if jobs:
    st.subheader("Your training jobs")
    for job in jobs:
        if not job.active:
            show_finished(job)
    if any(j.active for j in jobs):
        st.fragment(active_jobs, run_every=POLL_S)()


# ----------------------------------------------------------------------------- files

st.subheader("Cohort files")
# no type=[...]: a file of another kind gets a message saying why, not a silent refusal by the browser
files = st.file_uploader(
    "Cohort files (.h5ad)", accept_multiple_files=True, key="train_upload",
    help=f"AnnData .h5ad files: coordinates in obsm, cells' slide / patient / cell type in obs. Several files "
         f"are concatenated into one cohort; a file without a slide column is one slide. At most "
         f"{upload_limit_mb:,} MB per file.")
if not files:
    st.info("Upload one or more .h5ad files to start.")
    st.stop()

staging = str(train_state.uploads_dir())
uploads, previews, problems = [], [], []
for file in files:
    upload = Upload(file.name, file.getvalue())
    preview, problem = train_state.preview(file.name, file.file_id, staging, _data=upload.data)
    uploads.append(upload)
    if problem:
        problems.append(problem)
        continue
    previews.append(preview)
    with st.expander(f"{upload.shown} · {preview.n_obs:,} cells · {preview.n_vars:,} features",
                     expanded=len(files) == 1):
        st.caption("obsm keys: " + (", ".join(f"`{k}`" for k in preview.obsm_keys) or "none"))
        st.dataframe(preview.head, width="stretch")
        st.dataframe(preview.dtypes, hide_index=True, width="stretch")
for problem in problems:
    st.error(problem)
if problems:
    st.caption("Remove the files that cannot be read (✕ in the list above), or upload them again fixed.")
    st.stop()

# ----------------------------------------------------------------------------- columns

st.subheader("Columns")
columns = train.column_union(previews)
obsm_keys, spatial_default = train.spatial_options(train.obsm_union(previews))


def select(label: str, options: list, default, key: str, **kwargs):
    """A selectbox whose remembered value falls back to ``default`` when no longer offered."""
    if key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]
    return st.selectbox(label, options, index=options.index(default), key=key, **kwargs)


def column_options(default: str) -> list:
    """The file's columns, after a "none" (None) when the default column is absent."""
    return ([] if default in columns else [None]) + columns


def none_label(text: str):
    return lambda v: text if v is None else v


cols = st.columns(4)
with cols[0]:
    spatial = select("Coordinates (obsm)", obsm_keys, spatial_default, "train_spatial",
                     help="(n_cells, 2) x, y positions; one unit within a slide")
with cols[1]:
    sample = select("Slide (obs)", column_options(Keys.SAMPLE), Keys.SAMPLE if Keys.SAMPLE in columns else None,
                    "train_sample", format_func=none_label("— none: one slide per file —"),
                    help="Slide id; one spatial graph per slide")
with cols[2]:
    patient = select("Patient (obs)", column_options(Keys.PATIENT),
                     Keys.PATIENT if Keys.PATIENT in columns else None, "train_patient",
                     format_func=none_label("— none: patient = slide —"), help="Several slides may share a patient")
with cols[3]:
    cell_type = select("Cell type (obs)", column_options(Keys.CELL_TYPE),
                       Keys.CELL_TYPE if Keys.CELL_TYPE in columns else None, "train_cell_type",
                       format_func=none_label("— none —"), help="Phenotype label; needed by the cell-type features")
chosen = {sample, patient, cell_type}
groups = st.multiselect("Group columns", [c for c in columns if c not in chosen], key="train_groups",
                        help="Clinical columns (e.g. response) that every file must have; they are kept in the run")
features = select("Encoder input", list(train.FEATURES), "auto", "train_features",
                  format_func=FEATURE_LABELS.get)
keys = CohortKeys(spatial=spatial, sample=sample or Keys.SAMPLE, patient=patient or Keys.PATIENT,
                  cell_type=cell_type or Keys.CELL_TYPE, groups=tuple(groups))

summary, problem = train_state.check(tuple(f.name for f in files), tuple(f.file_id for f in files), staging,
                                     keys, features, _data=tuple(u.data for u in uploads))
if problem:
    st.error(problem)
    st.stop()
st.success(" · ".join(f"{n:,} {word}{'' if n == 1 else 's'}" for n, word in (
    (summary.n_cells, "cell"), (summary.n_slides, "slide"), (summary.n_patients, "patient")))
    + f" · encoder input: {summary.features}")
for note in summary.notes:
    st.caption(note)

# ----------------------------------------------------------------------------- settings

st.subheader("Settings")
cols = st.columns(4)
with cols[0]:
    n_niches = st.number_input("Number of niches", min_value=2, max_value=50, value=None, step=1,
                               key="train_niches", placeholder="auto",
                               help="Empty: chosen in 3..15, the largest k whose clustering is as stable "
                                    "across subsamples as the most stable k's")
with cols[1]:
    n_steps = st.number_input("Training steps", min_value=1, max_value=100_000, value=None, step=50,
                              key="train_steps", placeholder=f"default: {summary.default_steps:,}",
                              help="Empty: the library's default for this many cells")
with cols[2]:
    seed = st.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="train_seed",
                           help="Same seed, same run on the CPU")
with cols[3]:
    umap = st.checkbox("UMAP layout", value=True, key="train_umap",
                       help="For the Embedding page; about 20–40 s more")

runs_dir = state.runs_dir()
taken = registry.taken(runs_dir)
if "train_name" not in st.session_state:
    st.session_state["train_name"] = train.default_run_name(uploads, runs_dir, taken)
run_name = st.text_input("Run name", key="train_name",
                         help=f"The run's folder in {runs_dir}: letters, digits, '_' and '-'")
name_problem = train.run_name_problem(run_name, runs_dir, taken)
if name_problem:
    st.error(name_problem)

mine = any(j.active for j in registry.jobs(session))
if mine:
    st.caption("Your job above must end (or be cancelled) before you start another.")
else:
    busy = registry.running()
    st.caption(f"{busy} job(s) training on this server now" + (": yours will wait in the queue." if busy else "."))
if st.button("Start training", type="primary", disabled=bool(name_problem) or mine, key="train_start"):
    options = train.run_options(keys, features=features, n_niches=n_niches, n_steps=n_steps, seed=seed,
                                   umap=umap)
    spec = job_queue.JobSpec(run_name=run_name, uploads=tuple(uploads), keys=keys, options=options,
                            runs_dir=runs_dir, uploads_dir=train_state.uploads_dir())
    try:
        registry.submit(session, spec)
    except job_queue.JobRefused as exc:
        st.error(str(exc))
    else:
        del st.session_state["train_name"]  # the next run gets a new default name
        st.rerun()

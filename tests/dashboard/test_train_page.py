"""The Train page (AppTest) and its background jobs (:mod:`explorer.train`, no Streamlit)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
from apptest_support import assert_clean, link_runs_dir, open_app
from malformed import CASES
from streamlit.testing.v1 import AppTest

from cellniche_core.io import CohortError, list_runs
from cellniche_core.keys import Keys
from cellniche_core.keys import CohortKeys
from explorer import job_queue, train, train_state, uploads
from explorer.job_queue import JobRefused, JobRegistry, JobSpec
from explorer.uploads import Upload

#: training settings small enough for a test: a few steps, fixed k, no UMAP
FAST = {"train_steps": 20, "train_niches": 4}
WAIT_S = 180


@pytest.fixture(scope="module")
def cohort_file(tmp_path_factory) -> Path:
    """A tiny simulated cohort (2 patients, 4 slides, 1,143 cells)."""
    from cellniche_core.simulate import simulate_cohort

    path = tmp_path_factory.mktemp("upload") / "two patients.h5ad"
    simulate_cohort(n_patients=2, cells_per_slide=300, seed=3).write_h5ad(path)
    return path


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test():
    """Stop the page's jobs after each test (a job left running would hold h5py's lock at exit)."""
    yield
    assert train_state.registry().shutdown(WAIT_S)


@pytest.fixture
def registries():
    """Make :class:`JobRegistry` objects that are shut down after the test."""
    made: list[JobRegistry] = []

    def make(**kwargs) -> JobRegistry:
        made.append(JobRegistry(**kwargs))
        return made[-1]

    yield make
    assert all(r.shutdown(WAIT_S) for r in made)


@pytest.fixture
def data_dir(tmp_path, small_run, monkeypatch) -> Path:
    """data/ as the dashboard sees it: ``runs/small``; uploads are staged in ``uploads/``."""
    link_runs_dir(tmp_path, small_run, monkeypatch)
    return tmp_path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(data_dir: Path) -> list[str]:
    """Anything left in the uploads folder, and any run folder besides ``small``."""
    uploads = data_dir / "uploads"
    staged = [str(p.relative_to(data_dir)) for p in uploads.rglob("*")] if uploads.exists() else []
    runs = [f"runs/{p.name}" for p in (data_dir / "runs").iterdir() if p.name != "small"]
    return staged + runs


def empty(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def wait_for(condition, *, timeout: float = WAIT_S, poll_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll_s)


def open_train() -> AppTest:
    return open_app(page="train", timeout=120)


def upload(at: AppTest, *files: tuple[str, bytes]) -> AppTest:
    at.file_uploader(key="train_upload").set_value([(n, d, "application/octet-stream") for n, d in files])
    return at.run()


def configure(at: AppTest, name: str, *, steps: int = FAST["train_steps"]) -> AppTest:
    at.number_input(key="train_steps").set_value(steps)
    at.number_input(key="train_niches").set_value(FAST["train_niches"])
    at.checkbox(key="train_umap").uncheck()
    at.text_input(key="train_name").input(name)
    return at.run()


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def wait_until(at: AppTest, done, *, timeout: float = WAIT_S, poll_s: float = 0.5) -> AppTest:
    """Rerun the page (as its polling fragment does) until ``done(at)``."""
    deadline = time.monotonic() + timeout
    while not done(at):
        assert time.monotonic() < deadline, "the training job did not get there in time"
        time.sleep(poll_s)
        at.run()
    return at


def job_over(at: AppTest) -> bool:
    return not any(b.key and b.key.startswith("train_cancel_") for b in at.button)


def button(at: AppTest, prefix: str):
    return next(b for b in at.button if b.key and b.key.startswith(prefix))


# ----------------------------------------------------------------------------- the page


def test_train_page_asks_for_files(data_dir):
    at = open_train()
    assert_clean(at)
    assert at.title[0].value == "Train a run"
    uploader = at.file_uploader(key="train_upload")
    assert uploader.accept_multiple_files
    assert "1,024 MB" in texts(at.caption)  # the upload limit of .streamlit/config.toml
    assert "1 job at a time" in texts(at.caption)
    assert "Upload one or more" in at.info[0].value


def test_upload_trains_a_run_that_appears_in_the_run_list(data_dir, cohort_file):
    before = sha256(cohort_file)
    at = upload(open_train(), (cohort_file.name, cohort_file.read_bytes()))
    assert_clean(at)
    assert "two patients.h5ad · 1,143 cells" in at.expander[0].label
    assert at.selectbox(key="train_sample").value == Keys.SAMPLE
    assert at.selectbox(key="train_cell_type").value == Keys.CELL_TYPE
    assert at.selectbox(key="train_spatial").value == Keys.SPATIAL
    assert "1,143 cells · 4 slides · 2 patients · encoder input: pheno" in at.success[0].value
    at.multiselect(key="train_groups").set_value(["response"])
    at = configure(at, "tiny")
    assert_clean(at)

    at.button(key="train_start").click().run()
    assert_clean(at)
    assert at.subheader[0].value == "Your training jobs"
    wait_until(at, job_over)
    assert_clean(at)
    assert "Run **tiny** is ready" in at.success[0].value
    assert "tiny" in at.sidebar.selectbox[0].options  # the sidebar's run list was refreshed
    assert leftovers(data_dir) == ["runs/tiny"]
    assert sha256(cohort_file) == before
    manifest = json.loads((data_dir / "runs" / "tiny" / "manifest.json").read_text())
    assert manifest["inputs"] == ["upload: two patients.h5ad"]  # not the deleted staging copy

    button(at, "train_open_").click().run()  # open the new run
    assert_clean(at)
    assert at.title[0].value == "Cohort overview"
    assert at.sidebar.selectbox[0].value == "tiny"
    assert {m.label: m.value for m in at.metric}["Cells"] == "1,143"


def test_cancel_leaves_no_run_and_no_upload(data_dir, cohort_file):
    at = upload(open_train(), (cohort_file.name, cohort_file.read_bytes()))
    at = configure(at, "cancelled", steps=100_000)
    at.button(key="train_start").click().run()
    wait_until(at, lambda at: any("step" in b.proto.text for b in at.get("progress")))
    assert any((data_dir / "uploads").glob("train-*/*.h5ad"))  # staged while it trains

    button(at, "train_cancel_").click().run()
    wait_until(at, job_over)
    assert_clean(at)
    assert "was cancelled; nothing was written" in at.info[0].value
    assert leftovers(data_dir) == []
    assert [p.name for p in (data_dir / "runs").iterdir()] == ["small"]  # no hidden half-written run


@pytest.mark.parametrize("name", ["../x", "/etc/x", "a/b", "..", ".", "x\0y", "a b", "run.v2", "~x", "a\\b",
                                  "réseau", "x\n", "x" * 65, "", "small"])
def test_bad_run_names_are_refused_with_a_message(tmp_path, name):
    runs = tmp_path / "runs"
    (runs / "small").mkdir(parents=True)
    assert train.run_name_problem(name, runs)
    spec = JobSpec(name, (Upload("a.h5ad", b"x"),), CohortKeys(), train.run_options(CohortKeys()),
                   runs, tmp_path / "uploads")
    with pytest.raises(JobRefused, match="run"):
        JobRegistry().submit("session", spec)
    assert [p.name for p in tmp_path.rglob("*")] == ["runs", "small"]


def test_good_run_names_are_accepted(tmp_path):
    for name in ("my_run-2", "A" * 64, "run"):
        assert train.run_name_problem(name, tmp_path) is None
    first = train.default_run_name([Upload("my cohort.h5ad", b"")], tmp_path, now=0)
    assert first.startswith("my_cohort_") and train.run_name_problem(first, tmp_path) is None
    (tmp_path / first).mkdir()
    assert train.default_run_name([Upload("my cohort.h5ad", b"")], tmp_path, now=0) == f"{first}-2"


def test_the_page_refuses_a_path_as_run_name(data_dir, cohort_file):
    at = upload(open_train(), (cohort_file.name, cohort_file.read_bytes()))
    for name, message in (("../escape", "only hold letters"), ("small", "already exists"),
                          ("x" * 65, "at most 64")):
        at.text_input(key="train_name").input(name).run()
        assert not at.exception
        assert message in texts(at.error)
        assert at.button(key="train_start").disabled
    assert leftovers(data_dir) == [] and not (data_dir / "escape").exists()


def test_a_run_written_meanwhile_appears_in_the_run_list(data_dir, small_run):
    at = open_train()
    assert at.sidebar.selectbox[0].options == ["small"]
    (data_dir / "runs" / "from_cli").symlink_to(small_run, target_is_directory=True)
    at.run()
    assert at.sidebar.selectbox[0].options == ["from_cli", "small"]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_malformed_upload_is_a_message(case, data_dir, tmp_path_factory):
    path = case.write(tmp_path_factory.mktemp("malformed"))
    if path.is_dir():
        pytest.skip("a folder (a .zarr store) cannot be uploaded as one file")
    before = sha256(path)
    at = upload(open_train(), (path.name, path.read_bytes()))
    if any(s.key == "train_features" for s in at.selectbox):  # the file was read: check it as the case says
        at.selectbox(key="train_features").set_value(case.features).run()

    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1, texts(at.error)
    message = at.error[0].value
    assert case.message in message.lower(), message
    assert message.startswith(f"{path.name}: ") and "uploads" not in message
    assert not any(b.key == "train_start" for b in at.button)
    assert sha256(path) == before
    assert leftovers(data_dir) == []

    at.switch_page("pages/overview.py").run()  # the app keeps working
    assert_clean(at)
    assert at.title[0].value == "Cohort overview"


# ----------------------------------------------------------------------------- concurrent sessions


def test_sessions_browse_while_another_trains(data_dir, cohort_file):
    # AppTest sets a process-wide runtime for each run, so its sessions cannot run scripts in
    # parallel threads: they take turns here, while the job trains in its own thread
    trainer = configure(upload(open_train(), (cohort_file.name, cohort_file.read_bytes())), "concurrent",
                        steps=200)
    trainer.button(key="train_start").click().run()
    browsers = {page: open_app(timeout=120) for page in ("pages/maps.py", "pages/embedding.py",
                                                         "pages/train.py")}
    rounds = 0
    while not job_over(trainer):
        for page, at in browsers.items():
            for target in (page, "pages/overview.py"):
                at.switch_page(target).run()
                assert_clean(at)
        trainer.run()
        assert_clean(trainer)
        rounds += 1
    assert rounds >= 1  # the other sessions kept working while the job trained
    at = browsers["pages/train.py"].switch_page("pages/train.py").run()
    assert not any(s.value == "Your training jobs" for s in at.subheader)  # jobs belong to their session
    assert "Run **concurrent** is ready" in trainer.success[0].value
    assert leftovers(data_dir) == ["runs/concurrent"]


def test_sessions_submit_at_the_same_time(tmp_path, cohort_file, registries):
    registry = registries(max_running=1, max_waiting=2)
    keys = CohortKeys()
    options = train.run_options(keys, n_niches=3, n_steps=100_000, umap=False)
    data = cohort_file.read_bytes()
    outcomes: dict[str, str] = {}
    start = threading.Barrier(6)

    def submit(session: str) -> None:
        spec = JobSpec(f"run_{session}", (Upload("c.h5ad", data),), keys, options, tmp_path / "runs",
                       tmp_path / "uploads")
        start.wait()
        try:
            outcomes[session] = registry.submit(session, spec).status
        except JobRefused as exc:
            outcomes[session] = str(exc)

    threads = [threading.Thread(target=submit, args=(f"s{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    accepted = [s for s, outcome in outcomes.items() if outcome in job_queue.ACTIVE]
    refused = [outcome for outcome in outcomes.values() if outcome not in job_queue.ACTIVE]
    assert len(outcomes) == 6 and len(accepted) == 3  # one training (or about to), two waiting
    assert all("busy" in message for message in refused)
    jobs = [registry.jobs(s)[0] for s in accepted]
    wait_for(lambda: any(j.stage == "train" for j in jobs))
    assert sum(j.status == job_queue.RUNNING for j in jobs) == 1
    assert registry.shutdown(WAIT_S)
    assert all(j.status == job_queue.CANCELLED for j in jobs)
    assert not list_runs(tmp_path / "runs") and empty(tmp_path / "uploads")


def test_spatial_key_is_never_guessed_from_an_embedding():
    assert train.spatial_options(["X_pca", "spatial"]) == (["X_pca", "spatial"], "spatial")
    assert train.spatial_options(["X_pca", "X_spatial"]) == (["X_pca", "X_spatial"], "X_spatial")
    assert train.spatial_options(["X_pca", "X_umap"]) == (["spatial", "X_pca", "X_umap"], "spatial")


# ----------------------------------------------------------------------------- logic


def test_staged_names_are_safe_and_distinct(tmp_path):
    files = [Upload("../../etc/passwd.h5ad", b"1"), Upload("a b.h5ad", b"2"), Upload("a_b.h5ad", b"3"),
             Upload("ÿ.h5ad", b"4"), Upload("C:\\x\\é.H5AD", b"5")]
    paths = uploads.stage_uploads(files, tmp_path / "job")
    assert [p.name for p in paths] == ["passwd.h5ad", "a_b.h5ad", "a_b-2.h5ad", "upload.h5ad", "upload-2.h5ad"]
    assert all(p.parent == tmp_path / "job" for p in paths)
    assert [p.read_bytes() for p in paths] == [b"1", b"2", b"3", b"4", b"5"]
    with pytest.raises(CohortError, match=r"notes.csv: unsupported file type '.csv'"):
        uploads.stage_uploads([Upload("notes.csv", b"x,y")], tmp_path / "other")


def test_preview_and_check_name_the_upload(tmp_path, cohort_file):
    good = Upload("cohort.h5ad", cohort_file.read_bytes())
    preview = uploads.preview_upload(good, tmp_path)
    assert preview.n_obs == 1143 and Keys.SPATIAL in preview.obsm_keys
    assert {Keys.SAMPLE, Keys.PATIENT, Keys.CELL_TYPE, "response"} <= set(preview.columns)
    assert len(preview.head) == uploads.PREVIEW_ROWS
    check = train.check_cohort([good], tmp_path, CohortKeys(groups=("response",)))
    assert (check.n_cells, check.n_slides, check.n_patients, check.features) == (1143, 4, 2, "pheno")

    with pytest.raises(CohortError) as info:
        train.check_cohort([good], tmp_path, CohortKeys(cell_type="phenotype"), features="pheno")
    assert str(info.value).startswith("cohort.h5ad: obs['phenotype'] is missing")
    with pytest.raises(CohortError, match=r"^broken.h5ad: .*not an HDF5 file"):
        uploads.preview_upload(Upload("broken.h5ad", b"garbage" * 100), tmp_path)
    assert list(tmp_path.iterdir()) == []  # every staging folder was removed


def test_registry_queues_refuses_and_cancels(tmp_path, cohort_file, registries):
    registry = registries(max_running=1, max_waiting=1)
    keys = CohortKeys()
    options = train.run_options(keys, n_niches=3, n_steps=100_000, umap=False)

    def spec(name: str) -> JobSpec:
        return JobSpec(name, (Upload(cohort_file.name, cohort_file.read_bytes()),), keys, options,
                       tmp_path / "runs", tmp_path / "uploads")

    first = registry.submit("alice", spec("first"))
    wait_for(lambda: first.stage == "train" or not first.active)
    assert first.stage == "train", first.error
    with pytest.raises(JobRefused, match="already have a training job"):
        registry.submit("alice", spec("second"))
    with pytest.raises(JobRefused, match="A job is already training a run named 'first'"):
        registry.submit("bob", spec("first"))
    second = registry.submit("bob", spec("second"))
    with pytest.raises(JobRefused, match="busy"):
        registry.submit("carol", spec("third"))
    assert registry.jobs("alice") == [first] and registry.get("alice", second.id) is None
    assert second.status == job_queue.QUEUED and registry.position(second) == 1

    registry.cancel("alice", second.id)  # another session's job: nothing happens
    assert not second.cancel_requested
    registry.cancel("bob", second.id)
    registry.cancel("alice", first.id)
    assert first.wait(WAIT_S) and second.wait(WAIT_S)
    assert (first.status, second.status) == (job_queue.CANCELLED, job_queue.CANCELLED)
    assert second.message == "cancelled before it started"
    assert not list_runs(tmp_path / "runs") and empty(tmp_path / "uploads")
    registry.dismiss("alice", first.id)
    assert registry.jobs("alice") == []


def test_a_job_reports_a_failed_run(tmp_path, cohort_file, registries):
    registry = registries()
    keys = CohortKeys(sample="slide")  # not a column of the file
    spec = JobSpec("bad", (Upload("my cohort.h5ad", cohort_file.read_bytes()),), keys,
                   train.run_options(keys, n_steps=20), tmp_path / "runs", tmp_path / "uploads")
    job = registry.submit("s", spec)
    assert job.wait(WAIT_S)
    assert job.status == job_queue.FAILED
    assert job.error.startswith("my cohort.h5ad: obs['slide'] is missing")
    assert empty(tmp_path / "runs") and empty(tmp_path / "uploads")


def test_stale_staging_folders_are_removed(tmp_path):
    import os

    old, new, other = tmp_path / "train-0123", tmp_path / ".check-abcd", tmp_path / "keep-me"
    # the Label transfer page's query and download folders are staging folders too
    old_query, old_download = tmp_path / ".query-1234", tmp_path / ".download-5678"
    for folder in (old, new, other, old_query, old_download):
        folder.mkdir()
        (folder / "f.h5ad").write_bytes(b"x")
    day_ago = time.time() - uploads.STALE_AFTER_S - 60
    for folder in (old, other, old_query, old_download):
        os.utime(folder, (day_ago, day_ago))
    assert sorted(uploads.remove_stale_staging(tmp_path)) == sorted([old, old_query, old_download])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".check-abcd", "keep-me"]
    assert uploads.remove_stale_staging(tmp_path / "missing") == []


def test_progress_runs_through_the_stages_in_order():
    from cellniche_core.pipeline import STAGES

    positions = [job_queue.overall_progress(stage, f) for stage in STAGES for f in (0.0, 0.5, 1.0)]
    assert positions == sorted(positions) and positions[0] == 0.0 and positions[-1] == 1.0


def test_train_page_check_names_the_columns_of_the_upload(tmp_path):
    from malformed import valid_file

    from cellniche_core.io import CohortError
    from cellniche_core.keys import CohortKeys
    from explorer.train import check_cohort
    from explorer.uploads import Upload

    path = valid_file(tmp_path / "tumour.h5ad")
    upload = Upload("tumour.h5ad", path.read_bytes())
    with pytest.raises(CohortError) as info:
        check_cohort([upload], tmp_path / "uploads", CohortKeys(cell_type="celltype_typo"))
    message = str(info.value)
    assert message.startswith("tumour.h5ad: ") and "obs['celltype_typo'] is missing" in message
    assert "'cell_type'" in message

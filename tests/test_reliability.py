"""Never lose or corrupt data, never run a stranger's code: kills at random moments of store
creation and of the shard phase, a store lock, readers that refuse missing or unfinished data,
checkpoints that cannot run code and carry a checksum, metadata damage found by verify, and
one-line errors for bad input and full disks."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zarr
from PIL import Image

from softprep import SoftprepError, open_store
from softprep.build import build
from softprep.datasets.base import stored_sample
from softprep.datasets import get_dataset
from softprep.demo import make_demo
from softprep.store import SplitSpec, creating_path, deleting_path, shard_file, store_lock
from softprep.verify import verify
from tests.conftest import comparable_bytes

# Kills per randomised kill test; a soak run raises it (SOFTPREP_KILLS=200 pytest -k killed).
KILLS = int(os.environ.get("SOFTPREP_KILLS", "10"))


def softprep(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softprep.cli", *map(str, args)], capture_output=True, text=True, **kwargs)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(("softprep: error: ", "softprep-train: error: ")), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def same_files(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert comparable_bytes(a, rel) == comparable_bytes(b, rel), rel


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("torture") / "data", train=8, val=3, size=(64, 128), seed=5)


def build_args(data: Path, out: Path) -> list:
    return ["build", "--root", data, "--out", out, "--scales", "0.25", "0.5", "short20", "fit24x24",
            "--shard-size", "1", "--jobs", "2"]


def watch_phases(args: list) -> tuple[float, float]:
    """Run a build; return how long store creation took and how long the shard phase took (s)."""
    out = Path(args[args.index("--out") + 1])
    process = subprocess.Popen([sys.executable, "-m", "softprep.cli", *map(str, args)], stdout=subprocess.DEVNULL)
    creating = renamed = None
    while process.poll() is None:
        if creating is None and creating_path(out).exists():
            creating = time.perf_counter()
        if renamed is None and out.exists():
            renamed = time.perf_counter()
        time.sleep(0.0005)
    assert process.returncode == 0 and creating and renamed
    return renamed - creating, time.perf_counter() - renamed


def kill_during(args: list, phase: str, fraction: float) -> None:
    """Start a build and SIGKILL its whole process group ``fraction`` of the way into ``phase``
    (``creation``: from the temporary store's appearance; ``shards``: from the store's rename)."""
    out = Path(args[args.index("--out") + 1])
    process = subprocess.Popen([sys.executable, "-m", "softprep.cli", *map(str, args)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    marker = creating_path(out) if phase == "creation" else out
    while not marker.exists() and process.poll() is None:
        time.sleep(0.0002)
    time.sleep(fraction)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def kill_after(args: list, seconds: float) -> None:
    """Start a build and SIGKILL its whole process group ``seconds`` after starting it."""
    process = subprocess.Popen([sys.executable, "-m", "softprep.cli", *map(str, args)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def phase_of(out: Path) -> str:
    """Where a killed build stopped, read from what it left."""
    if deleting_path(out).exists():
        return "deletion"
    if creating_path(out).exists() and not out.exists():
        return "creation"
    if not out.exists():
        return "start"
    return "shards" if not open_store(out).complete else "completed"


def test_kill_at_random_moments_of_the_whole_build_then_resume_is_identical(data, tmp_path):
    """KILLS SIGKILLs at random moments of a whole build (start-up, creation, shards, completion)
    and of an --overwrite rebuild (deletion first) of a store built from *another* dataset of the
    same layout, one in five aimed into creation and one in five into a fresh build's shards; each
    killed store is finished by rerunning without --overwrite (where the other dataset's store is still whole, that rerun is
    refused, never called complete, and the --overwrite rebuild is rerun) and equals a clean build
    file for file, byte for byte."""
    reference = tmp_path / "reference.zarr"
    started = time.perf_counter()
    creation, shards = watch_phases(build_args(data, reference))
    duration = time.perf_counter() - started
    other_data = make_demo(tmp_path / "other", train=8, val=3, size=(64, 128), seed=6)
    other = tmp_path / "other.zarr"
    assert softprep(*build_args(other_data, other)).returncode == 0
    rng = np.random.default_rng(0)
    hits: dict[str, int] = {}
    refused = 0
    for k in range(KILLS):
        out = tmp_path / f"killed{k}.zarr"
        args = build_args(data, out)
        if k % 2:  # an --overwrite rebuild of a complete store of the other dataset
            shutil.copytree(other, out)
            args = [*args, "--overwrite"]
        if k % 5 == 0:  # creation is short: aim some kills into it
            kill_during(args, "creation", rng.uniform(0, creation))
        elif k % 5 in (2, 4) and not k % 2:  # and some into the shards of a fresh build
            kill_during(args, "shards", rng.uniform(0, shards))
        else:
            kill_after(args, rng.uniform(0, duration * 1.1))
        phase = phase_of(out)
        hits[phase] = hits.get(phase, 0) + 1
        if phase == "shards":
            info = softprep("info", out)
            assert info.returncode == 0 and "UNFINISHED" in info.stdout and "Traceback" not in info.stderr
        resumed = softprep(*build_args(data, out))
        if resumed.returncode and k % 2 and "store was built from other files" in resumed.stderr:
            refused += 1  # killed before the deletion began: the other dataset's store, refused
            assert open_store(out).complete and "complete" not in resumed.stdout
            resumed = softprep(*build_args(data, out), "--overwrite")
        assert resumed.returncode == 0, (phase, resumed.stderr)
        assert not creating_path(out).exists() and not deleting_path(out).exists()
        same_files(reference, out)
        shutil.rmtree(out)
    assert hits.get("shards", 0) >= 2 and hits.get("creation", 0) + hits.get("deletion", 0) >= 1, hits
    print(f"kills by phase: {hits}; refused stale stores: {refused}; identical resumes: {KILLS}")


def test_interrupted_creation_leftovers_and_empty_folders_are_cleared(data, tmp_path):
    out = tmp_path / "s.zarr"
    creating_path(out).mkdir()
    (creating_path(out) / "zarr.json").write_text("{")  # torn: zarr writes every file atomically, so not softprep's
    refused = softprep(*build_args(data, out))
    assert_one_line_error(refused, f"{creating_path(out)}: is a folder holding zarr.json, without softprep's store marker",
                          "will not delete it")
    assert (creating_path(out) / "zarr.json").read_text() == "{"
    # what a killed creation leaves: the marked root (written first, atomically), a chunk's temporary file
    marker = {"zarr_format": 3, "node_type": "group", "attributes": {"softprep": {"format": "softprep-store", "creating": True}}}
    (creating_path(out) / "zarr.json").write_text(json.dumps(marker))
    (creating_path(out) / "train").mkdir()
    (creating_path(out) / "train" / "zarr.json.0a1b.partial").write_bytes(b"{")
    result = softprep(*build_args(data, out))
    assert result.returncode == 0, result.stderr
    assert not creating_path(out).exists() and open_store(out).complete
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    assert softprep(*build_args(data, empty)).returncode == 1
    assert softprep(*build_args(data, empty), "--overwrite").returncode == 0


def test_a_second_build_on_a_locked_store_is_refused(data, tmp_path):
    out = tmp_path / "s.zarr"
    with store_lock(out):
        result = softprep(*build_args(data, out))
        assert_one_line_error(result, str(out), f"another softprep build (pid {os.getpid()}) is writing this store")
        result = softprep(*build_args(data, out), "--overwrite")
        assert_one_line_error(result, "another softprep build")
    assert softprep(*build_args(data, out)).returncode == 0


def test_killing_the_parent_stops_its_workers(tmp_path):
    data = make_demo(tmp_path / "big", train=12, val=0, size=(512, 1024), seed=1)
    out = tmp_path / "s.zarr"
    process = subprocess.Popen([sys.executable, "-m", "softprep.cli", "build", "--root", str(data), "--out", str(out),
                                "--scales", "0.5", "1.0", "--splits", "train", "--shard-size", "1", "--jobs", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (out / "train" / "done").exists() or not open_store(out).done("train").any():
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.01)
    workers = psutil.Process(process.pid).children(recursive=True)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    gone, alive = psutil.wait_procs(workers, timeout=3)
    assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "workers kept running"
    time.sleep(1)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == files, "a worker wrote after the parent died"
    result = softprep("build", "--root", data, "--out", out, "--scales", "0.5", "1.0", "--splits", "train",
                      "--shard-size", "1", "--jobs", "2")
    assert result.returncode == 0 and verify(out, jobs=1) == []


@pytest.fixture()
def store(data, tmp_path) -> Path:
    out = tmp_path / "s.zarr"
    build(get_dataset("cityscapes", data), out, [0.25, 0.5], jobs=1, shard_size=2)
    return out


def test_readers_refuse_unfinished_missing_and_damaged_images(store):
    view = open_store(store).samples("train", 0.5)
    done = zarr.open_array(str(store / "train" / "done"), mode="r+")
    done[2] = 0
    with pytest.raises(SoftprepError, match=rf"train/0.5: image {view.ids[2]} \(#2\): not built"):
        view[2].image
    from softprep_train.data import StoreDataset

    with pytest.raises(SoftprepError, match=r"#2\): not built"):
        StoreDataset(str(store), "train", 0.5)[2]
    bucket = view.bucket(4)
    shard_file(bucket["nn"], 4, store).unlink()  # the shard holding positions 4 and 5
    with pytest.raises(SoftprepError, match=r"#4\): the nn shard file is missing"):
        view[4].nn()
    shard = shard_file(bucket["image"], 0, store)
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(SoftprepError, match=rf"image {view.ids[0]} \(#0\): image cannot be read"):
        view[0].image


def test_verify_sees_metadata_damage(store):
    assert verify(store, jobs=1) == []
    split = zarr.open_group(str(store / "train"), mode="r+")
    sizes = split.attrs["sizes"]
    split.attrs["sizes"] = [[32, 64]] + sizes[1:]
    problems = verify(store, jobs=1)
    assert any("attributes differ from those recorded" in p for p in problems)
    assert any("train/0.5: image" in p and "(#0)" in p for p in problems)  # its bucket no longer exists
    split.attrs["sizes"] = sizes
    root = zarr.open_group(str(store), mode="r+")
    attrs = dict(root.attrs["softprep"])
    root.attrs["softprep"] = {**attrs, "classes": ["x"] + attrs["classes"][1:]}
    assert any("attributes differ" in p for p in verify(store, jobs=1))
    root.attrs["softprep"] = attrs
    shutil.rmtree(store / "train" / "counts" / "c")
    assert any("train/counts: images" in p and "chunk file c/0/0 missing" in p for p in verify(store, jobs=1))
    (store / "val" / "0.5" / "mass" / "zarr.json").write_text("{not json")
    problems = verify(store, jobs=1)
    assert any(p.startswith("val/0.5/mass: array cannot be opened") for p in problems)
    result = softprep("verify", store, "--jobs", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout


def test_bad_targets_are_one_line_and_create_nothing(data, tmp_path):
    out = tmp_path / "s.zarr"
    for bad, fragment in (("nan", "must be a finite number > 0"), ("inf", "must be a finite number > 0"),
                          ("-0.5", "must be a finite number > 0"), ("0", "must be a finite number > 0")):
        assert_one_line_error(softprep("build", "--root", data, "--out", out, "--scales", bad), f"'{bad}'", fragment)
    assert_one_line_error(softprep("build", "--root", data, "--out", out, "--scales", "100"),
                          "--scales 100.0: a factor above 1 enlarges every image", "--allow-upsampling")
    assert_one_line_error(softprep("build", "--root", data, "--out", out, "--scales", "100", "--allow-upsampling"),
                          "over the --max-pixels limit of 32", "use smaller targets")
    assert not out.exists() and not creating_path(out).exists()


def test_oversized_image_is_refused_at_planning(tmp_path):
    root = tmp_path / "d"
    for kind, name, mode in (("leftImg8bit", "x_000000_000019_leftImg8bit.png", "RGB"),
                             ("gtFine", "x_000000_000019_gtFine_labelTrainIds.png", "L")):
        (root / kind / "train" / "x").mkdir(parents=True)
        Image.new(mode, (8000, 5000)).save(root / kind / "train" / "x" / name)
    assert (root / "gtFine" / "train" / "x" / "x_000000_000019_gtFine_labelTrainIds.png").stat().st_size < 300_000
    result = softprep("build", "--root", root, "--out", tmp_path / "s.zarr", "--scales", "0.125")
    assert_one_line_error(result, "x_000000_000019_leftImg8bit.png", "8000x5000 (WxH) is 40.0 megapixels", "--max-pixels")
    ok = softprep("build", "--root", root, "--out", tmp_path / "s.zarr", "--scales", "0.125", "--max-pixels", "50000000")
    assert ok.returncode == 0, ok.stderr


def test_duplicate_ids_and_orphan_labels_are_reported(data, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(data, root)
    city = next((root / "leftImg8bit" / "val").iterdir())
    os.symlink(city, root / "leftImg8bit" / "val" / "copy")
    os.symlink(root / "gtFine" / "val" / city.name, root / "gtFine" / "val" / "copy")
    result = softprep("build", "--root", root, "--out", tmp_path / "s.zarr", "--scales", "0.5")
    assert_one_line_error(result, "same id", "duplicated or symlinked folder")
    os.unlink(root / "leftImg8bit" / "val" / "copy")
    os.unlink(root / "gtFine" / "val" / "copy")
    image = sorted((root / "leftImg8bit" / "train").rglob("*.png"))[0]
    image.unlink()
    result = softprep("build", "--root", root, "--out", tmp_path / "s.zarr", "--scales", "0.5")
    assert_one_line_error(result, "_gtFine_labelIds.png: no image", image.name)


def test_paths_recorded_in_a_store_stay_inside_the_root(data):
    dataset = get_dataset("cityscapes", data)
    spec = SplitSpec(ids=["x"], images=["../../etc/passwd"], labels=["gtFine/x.png"], sizes=[[1, 1]])
    with pytest.raises(SoftprepError, match="outside the dataset root"):
        stored_sample(dataset, spec, 0)


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as a full disk does
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def test_full_disk_is_one_line_and_the_rerun_resumes(data, tmp_path):
    out = tmp_path / "s.zarr"
    args = ["build", "--root", data, "--out", out, "--scales", "1.0", "--shard-size", "1", "--jobs", "1"]
    full = subprocess.run([sys.executable, "-m", "softprep.cli", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=_limit_file_size)
    assert_one_line_error(full, "File too large", "rerun the same command to resume")
    assert out.exists() and not open_store(out).complete
    again = softprep(*args)
    assert again.returncode == 0, again.stderr
    assert verify(out, jobs=1) == []


def test_unwritable_out_is_one_line(data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = softprep("build", "--root", data, "--out", blocker / "s.zarr", "--scales", "0.5")
    assert_one_line_error(result, "s.zarr")


# ------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("torch")
    from softprep_train.train import TrainConfig, fit

    folder = tmp_path_factory.mktemp("run")
    store = folder / "store.zarr"
    build(get_dataset("cityscapes", data), store, [0.25], jobs=1)
    fit(TrainConfig(store=str(store), scale="0.25", out=str(folder / "run"), model="hrnetv2_w18_small", iters=4,
                    stop_at=2, batch_size=2, workers=0, seed=1), progress=False)
    return store, folder / "run"


def train_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softprep_train.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def test_crafted_checkpoint_is_refused_without_running_code(run, tmp_path):
    import torch

    from softprep_train.checkpoint import load_checkpoint_state

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.pt"
    torch.save({"model": Payload(), "config": {}}, evil)
    with pytest.raises(SoftprepError, match="no valid softprep checksum trailer"):
        load_checkpoint_state(evil)  # refused before unpickling anything
    with pytest.raises(SoftprepError, match="refusing to load: the file holds objects other than tensors"):
        load_checkpoint_state(evil, verify=False)
    result = train_cli("eval", "--checkpoint", evil, "--store", run[0], "--no-verify")
    assert_one_line_error(result, str(evil), "refusing to load")
    assert not marker.exists()


def test_damaged_checkpoints_are_refused_with_one_line(run, tmp_path):
    store, folder = run
    good = (folder / "last.pt").read_bytes()
    cases = {
        "flipped": good[:1000] + bytes([good[1000] ^ 1]) + good[1001:],
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "garbage": os.urandom(5000),
        "cut by 1 byte": good[:-1],
        "flipped weight and magic": good[:1000] + bytes([good[1000] ^ 1]) + good[1001:-1] + bytes([good[-1] ^ 1]),
    }
    no_trailer = "no valid softprep checksum trailer"
    messages = {"flipped": "checksum mismatch", "truncated": no_trailer, "empty": "checkpoint is empty",
                "garbage": no_trailer, "cut by 1 byte": no_trailer, "flipped weight and magic": no_trailer}
    from softprep_train.checkpoint import load_checkpoint_state

    for name, content in cases.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(content)
        with pytest.raises(SoftprepError, match=messages[name]) as error:
            load_checkpoint_state(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)
    # the CLI turns each into one line (one case is enough to show the path)
    assert_one_line_error(train_cli("eval", "--checkpoint", tmp_path / "flipped.pt", "--store", store), "checksum mismatch")
    # a foreign file (plain torch.save, no trailer) loads only when asked to, and still without running code
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(good[:-40])
    with pytest.raises(SoftprepError, match=no_trailer):
        load_checkpoint_state(foreign)
    assert load_checkpoint_state(foreign, verify=False)["iteration"] == load_checkpoint_state(folder / "last.pt")["iteration"]
    assert_one_line_error(train_cli("eval", "--checkpoint", foreign, "--store", store), no_trailer, "--no-verify")
    with pytest.raises(SoftprepError, match="not a readable checkpoint"):
        load_checkpoint_state(tmp_path / "truncated.pt", verify=False)


def test_resume_accepts_the_store_by_any_path_and_a_moved_run_folder(run, tmp_path):
    store, folder = run
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    result = train_cli("fit", "--store", os.path.relpath(store, tmp_path), "--scale", "0.25", "--out", "moved",
                       "--model", "hrnetv2_w18_small", "--iters", "4", "--batch-size", "2", "--workers", "0",
                       "--seed", "1", "--resume", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "trained 4 iterations" in result.stdout
    finished = (moved / "last.pt").read_bytes()
    again = train_cli("fit", "--store", os.path.relpath(store, tmp_path), "--scale", "0.25", "--out", "moved",
                      "--model", "hrnetv2_w18_small", "--iters", "4", "--batch-size", "2", "--workers", "0",
                      "--seed", "1", "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith("the run already finished (4 iterations); nothing to resume")
    assert (moved / "last.pt").read_bytes() == finished


def test_a_second_fit_into_a_running_run_folder_is_refused(run, tmp_path):
    """Two fits into one --out would overwrite each other's last.pt: the second is refused while the
    first holds the run folder's lock."""
    store, folder = run
    live = tmp_path / "live"
    shutil.copytree(folder, live)
    with store_lock(live, "softprep-train fit", "run folder"):  # what a running fit holds
        result = train_cli("fit", "--store", store, "--scale", "0.25", "--out", live, "--model", "hrnetv2_w18_small",
                           "--iters", "4", "--batch-size", "2", "--workers", "0", "--seed", "1", "--resume")
    assert_one_line_error(result, f"{live}: another softprep-train fit (pid {os.getpid()}) is writing this run folder")
    assert (live / "last.pt").read_bytes() == (folder / "last.pt").read_bytes()


def _limit_file_size_to(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_during_fit_is_one_line_and_leaves_no_partial_checkpoint(run, tmp_path):
    """The checkpoint cannot be written (EFBIG as a full disk): one line, the last good checkpoint
    kept, no .partial file left."""
    store, folder = run
    out = tmp_path / "full"
    shutil.copytree(folder, out)
    before = (out / "last.pt").read_bytes()
    result = subprocess.run([sys.executable, "-m", "softprep_train.cli", "fit", "--store", str(store), "--scale", "0.25",
                             "--out", str(out), "--model", "hrnetv2_w18_small", "--iters", "4", "--batch-size", "2",
                             "--workers", "0", "--seed", "1", "--resume"], capture_output=True, text=True,
                            preexec_fn=_limit_file_size_to(len(before) // 2))
    assert_one_line_error(result, f"{out / 'last.pt'}: cannot write the checkpoint (File too large)", "--resume")
    assert (out / "last.pt").read_bytes() == before and not list(out.glob("*.partial"))


def test_foreign_checkpoints_and_damaged_records_are_one_line(run, tmp_path):
    """A checkpoint of another class count or missing config keys, and a store whose record chunks
    are damaged or gone (as while it is rebuilt), are one line in eval and priors."""
    from softprep_train.checkpoint import load_checkpoint_state, save_checkpoint

    store, folder = run
    state = load_checkpoint_state(folder / "last.pt")
    other = {**state, "num_classes": state["num_classes"] + 1}
    save_checkpoint(tmp_path / "other.pt", other)
    assert_one_line_error(train_cli("eval", "--checkpoint", tmp_path / "other.pt", "--store", store),
                          "its weights do not fit hrnetv2_w18_small with 20 classes", "size mismatch")
    missing = {**state, "config": {k: v for k, v in state["config"].items() if k != "scale"}}
    save_checkpoint(tmp_path / "missing.pt", missing)
    assert_one_line_error(train_cli("eval", "--checkpoint", tmp_path / "missing.pt", "--store", store),
                          "not a complete softprep-train checkpoint (missing config.scale)")
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(store, damaged)
    chunk = next(p for p in (damaged / "train" / "0.25" / "mass_numerator" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"\0" * 20)
    assert_one_line_error(softprep("priors", damaged), "train/0.25: records cannot be read", "softprep verify")
    shutil.rmtree(damaged / "train" / "0.25")  # a target group gone, as mid-rebuild
    assert_one_line_error(softprep("priors", damaged), "train/0.25: records cannot be read")


# ------------------------------------------------------------------------- export, eval, fit (issue 25)


def test_a_killed_export_never_loads_as_a_dataset_and_the_rerun_finishes_it(data, tmp_path):
    """SIGKILLs at random moments of `softprep export`: OUT either does not exist or loads with every
    row; rerunning the same command completes it, equal to an uninterrupted export row for row."""
    datasets = pytest.importorskip("datasets", reason="needs the hf extra")
    store = tmp_path / "s.zarr"
    build(get_dataset("cityscapes", data), store, [0.25, 0.5], jobs=1)
    args = ["export", store, "--to", "parquet", None, "--rows-per-file", "1"]

    def export(out):
        return subprocess.Popen([sys.executable, "-m", "softprep.cli", *map(str, args[:4]), out, *args[5:]],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    started = time.perf_counter()
    assert export(tmp_path / "reference").wait() == 0
    duration = time.perf_counter() - started
    reference = {t: datasets.load_dataset("parquet", data_dir=str(tmp_path / "reference" / t)) for t in ("0.25", "0.5")}
    rng = np.random.default_rng(1)
    outcomes = {"none": 0, "complete": 0}
    for k in range(6):
        out = tmp_path / f"hf{k}"
        process = export(out)
        time.sleep(rng.uniform(0.3, duration))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        if out.exists():  # the rename is the last step: an OUT is a whole export
            outcomes["complete"] += 1
        else:
            outcomes["none"] += 1
            for target in ("0.25", "0.5"):
                with pytest.raises(Exception):
                    datasets.load_dataset("parquet", data_dir=str(out / target))
        rerun = softprep(*args[:4], out, *args[5:])
        assert rerun.returncode == 0, rerun.stderr
        assert not (tmp_path / f"hf{k}.exporting").exists()
        for target, loaded in reference.items():
            again = datasets.load_dataset("parquet", data_dir=str(out / target))
            for split in loaded:
                assert again[split]["id"] == loaded[split]["id"] and again[split]["nn"] == loaded[split]["nn"]
    assert outcomes["none"] >= 3, outcomes
    print(f"killed exports: {outcomes}")


def test_eval_refuses_a_root_whose_labels_are_not_the_stores(data, tmp_path):
    """Two real datasets of one layout: a store of A scored with --root B is refused in one line (it
    printed mIoU 7.8 before); with --root A it scores."""
    pytest.importorskip("torch")
    from softprep_train.train import TrainConfig, fit

    other = make_demo(tmp_path / "other", train=8, val=3, size=(64, 128), seed=6)
    store = tmp_path / "s.zarr"
    build(get_dataset("cityscapes", data), store, [0.25], jobs=1)  # no 1.0 target: eval reads --root's labels
    fit(TrainConfig(store=str(store), scale="0.25", out=str(tmp_path / "run"), model="unet_small", iters=2,
                    batch_size=2, workers=0, seed=1), progress=False)
    checkpoint = tmp_path / "run" / "last.pt"
    wrong = train_cli("eval", "--checkpoint", checkpoint, "--store", store, "--root", other)
    assert_one_line_error(wrong, f"{other}: not the dataset {store} was built from", "its label file", "pass the --root")
    assert "mIoU" not in wrong.stdout
    right = train_cli("eval", "--checkpoint", checkpoint, "--store", store, "--root", data)
    assert right.returncode == 0 and "mIoU" in right.stdout, right.stderr


ITERS = "16"


def _fit_args(store: Path, out: Path, *extra) -> list:
    return ["fit", "--store", store, "--scale", "0.25", "--out", out, "--model", "unet_small", "--batch-size", "2",
            "--workers", "0", "--seed", "1", "--log-every", "1", *extra]


def test_fit_killed_at_any_moment_resumes_with_one_log_record_per_iteration(run, tmp_path):
    """Real SIGKILLs of `fit` before its first checkpoint and between checkpoints, and the state a
    kill between the final checkpoint and summary.json leaves: `--resume` always finishes the run
    (a folder without a checkpoint starts at 0), its log holds each iteration once, and the summary
    reports the run's first and final losses."""
    store, _ = run
    rng = np.random.default_rng(2)
    for k, moment in enumerate(("before the first checkpoint", "between checkpoints", "before the summary")):
        out = tmp_path / f"run{k}"
        args = _fit_args(store, out, "--iters", ITERS, "--checkpoint-every", "4" if k == 1 else "100")
        process = subprocess.Popen([sys.executable, "-m", "softprep_train.cli", *map(str, args)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        log = out / "log.jsonl"
        wanted = int(rng.integers(5, 11)) if k == 1 else 1
        while k < 2 and process.poll() is None and (not log.exists() or len(log.read_text().splitlines()) < wanted):
            time.sleep(0.005)
        if k < 2:
            os.killpg(process.pid, signal.SIGKILL)
        assert process.wait() == (0 if k == 2 else -signal.SIGKILL)
        if k == 2:
            (out / "summary.json").unlink()  # the final checkpoint is written, the summary not yet
        refused = train_cli(*_fit_args(store, out, "--iters", ITERS))
        assert_one_line_error(refused, "already holds a run", "--resume")
        resumed = train_cli(*_fit_args(store, out, "--iters", ITERS, "--resume"))
        assert resumed.returncode == 0, (moment, resumed.stderr)
        assert f"trained {ITERS} iterations" in resumed.stdout and "loss" in resumed.stdout, (moment, resumed.stdout)
        iterations = [json.loads(line)["iter"] for line in log.read_text().splitlines()]
        assert iterations == list(range(1, int(ITERS) + 1)), (moment, iterations)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["first_loss"] is not None and summary["final_loss"] is not None, moment

"""training/: config validation, dataset, sampler, CPU training, resume, checkpoints.

Uses a tiny fake task (small conv net regressing normalised coordinates with an
MSE loss) registered as "fake" / "fake+disc", and a synthetic dataset of small
images + .pts files written into tmp_path, so nothing here depends on
pyflm.tasks or on the real data."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyflm.data import invert_affine, load_folder, square_from_landmarks, transform_points, write_pts
from training import train as T
from training.config import ConfigError, load_config, validate_config
from training.dataset import LandmarkDataset, ResumableSampler, holdout_split, load_image

K = 68
CONFIG_DIR = Path(__file__).resolve().parents[1] / "training" / "configs"


# ---------------------------------------------------------------------------
# fake task and synthetic data
# ---------------------------------------------------------------------------


class FakeNet(nn.Module):
    def __init__(self, k: int, hidden: int = 8):
        super().__init__()
        self.k = k
        self.conv = nn.Conv2d(3, hidden, 3, stride=2, padding=1)
        self.drop = nn.Dropout(0.2)  # consumes the torch RNG: resume must restore it
        self.fc = nn.Linear(hidden * 16, 2 * k)

    def forward(self, x):
        h = F.adaptive_avg_pool2d(F.relu(self.conv(x)), 4).flatten(1)
        return self.fc(self.drop(h)).view(-1, self.k, 2)


class FakeTask:
    """The LandmarkTask interface: outputs are coordinates / input_size."""

    def __init__(self, num_landmarks: int = K, input_size: int = 32, hidden: int = 8, gan: bool = False):
        self.input_size = input_size
        self.model = FakeNet(num_landmarks, hidden)
        self.codec = None
        if gan:
            self.discriminator = nn.Linear(2 * num_landmarks, 1)

    def encode(self, coords, visibility):
        return {"coords": coords / self.input_size, "visibility": visibility}

    def loss(self, outputs, targets):
        mse = (((outputs - targets["coords"]) ** 2).sum(-1) * targets["visibility"]).mean()
        out = {"loss": mse, "mse": mse.detach()}
        if getattr(self, "discriminator", None) is not None:
            adv = F.softplus(-self.discriminator(outputs.flatten(1))).mean()
            out["adv"] = adv.detach()
            out["loss"] = mse + 1e-3 * adv
        return out

    def decode(self, outputs):
        return outputs * self.input_size, torch.ones(outputs.shape[:2])

    def discriminator_loss(self, real_coords, fake_coords):
        r = self.discriminator((real_coords / self.input_size).flatten(1))
        f = self.discriminator((fake_coords / self.input_size).flatten(1))
        return F.softplus(-r).mean() + F.softplus(f).mean()


T.register_task("fake", FakeTask)
class FakeTaskOutputsTargets(FakeTask):
    """The other discriminator_loss signature: (outputs, targets) -> dict."""

    def discriminator_loss(self, outputs, targets):
        return {"loss": FakeTask.discriminator_loss(self, targets["coords"] * self.input_size,
                                                    outputs * self.input_size)}


class NanTask(FakeTask):
    def loss(self, outputs, targets):
        out = super().loss(outputs, targets)
        return {"loss": out["loss"] * float("nan")}


T.register_task("fake-nan", NanTask)
T.register_task("fake+disc", lambda **kw: FakeTask(gan=True, **kw))
T.register_task("fake2+disc", lambda **kw: FakeTaskOutputsTargets(gan=True, **kw))


def make_landmarks(rng, size: int) -> np.ndarray:
    """68 points inside a face-like box of a ``size`` image, eye corners apart."""
    pts = rng.uniform(0.3 * size, 0.7 * size, (K, 2))
    pts[36] = (0.3 * size + rng.uniform(-1, 1), 0.4 * size)
    pts[45] = (0.7 * size + rng.uniform(-1, 1), 0.4 * size)
    return pts


def write_dataset(folder: Path, n: int, size: int = 48, seed: int = 0) -> list[np.ndarray]:
    """n images (dots at the landmarks on noise) + 1-based .pts files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pts = make_landmarks(rng, size)
        img = rng.integers(0, 60, (size + i % 3, size, 3), dtype=np.uint8)
        for x, y in pts:
            cv2.circle(img, (int(round(x)), int(round(y))), 1, (255, 200, 100), -1)
        cv2.imwrite(str(folder / f"img{i:03d}.png"), img)
        write_pts(folder / f"img{i:03d}.pts", pts)
        out.append(pts)
    return out


def config_text(train_dir, val_dir, task="fake", steps=20, val_every=10, extra_train="", extra_optim="",
                augment="none", extra_model=""):
    return f"""
[model]
task = "{task}"
input_size = 32
{extra_model}

[data]
train = "{train_dir}"
val = "{val_dir}"
augment = "{augment}"

[optim]
name = "adam"
lr = 0.01
lr_milestones = [15]
{extra_optim}

[train]
batch_size = 4
max_steps = {steps}
val_every = {val_every}
log_every = 1
seed = 3
num_workers = 0
{extra_train}
"""


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    write_dataset(root / "train", 10, seed=1)
    write_dataset(root / "val", 4, seed=2)
    return root / "train", root / "val"


def write_config(tmp_path, text, name="cfg.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def read_log(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------
# config validation
# ---------------------------------------------------------------------------

BASE = {"model": {"task": "fake"}, "data": {}, "optim": {}, "train": {}}


@pytest.mark.parametrize("section,key,value,match", [
    ("train", "batch_size", "8", r"train\.batch_size: expected int"),
    ("train", "batch_size", 0, r"train\.batch_size: must be > 0"),
    ("train", "bf16", 1, r"train\.bf16: expected bool"),
    ("train", "max_steps", True, r"train\.max_steps: expected int"),
    ("train", "bogus", 1, r"train\.bogus: unknown key"),
    ("optim", "name", "sgd", r"optim\.name: must be one of"),
    ("optim", "lr", "1e-3", r"optim\.lr: expected number"),
    ("optim", "lr_milestones", [5, 3], r"optim\.lr_milestones"),
    ("optim", "betas", [0.9], r"optim\.betas"),
    ("optim", "momentum", 0.9, r"optim\.momentum: not used by adam"),
    ("data", "augment", "paper3", r"data\.augment: must be one of"),
    ("data", "warp", "gpu", r"data\.warp: must be one of"),
    ("data", "crop_scale", -1.0, r"data\.crop_scale: must be > 0"),
    ("data", "train", 5, r"data\.train: must be a split name"),
    ("data", "extra_train", "youtube-train", r"data\.extra_train: must be a list"),
    ("model", "num_landmarks", "68", r"model\.num_landmarks: expected int"),
    ("train", "keep_every", -5, r"train\.keep_every: must be >= 0"),
    ("train", "keep_every", 1500, r"train\.keep_every: must be a multiple of train\.val_every \(1000\)"),
])
def test_config_errors_name_the_key(section, key, value, match):
    raw = {s: dict(v) for s, v in BASE.items()}
    raw[section][key] = value
    with pytest.raises(ConfigError, match=match):
        validate_config(raw)


def test_config_structure_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.task: missing"):
        validate_config({"model": {"input_size": 3}})
    with pytest.raises(ConfigError, match=r"model: missing"):
        validate_config({"train": {}})
    with pytest.raises(ConfigError, match=r"trian: unknown section"):
        validate_config({"model": {"task": "fake"}, "trian": {}})
    with pytest.raises(ConfigError, match=r"invalid TOML"):
        load_config(write_config(tmp_path, "[model\ntask="))
    with pytest.raises(ConfigError, match=r"model\.when: unsupported value type"):
        load_config(write_config(tmp_path, "[model]\ntask='fake'\nwhen=1979-05-27\n"))
    cfg = validate_config({"model": {"task": "fake", "input_size": 32}})
    assert cfg["train"]["patience"] == 10 and cfg["optim"]["lr"] == 1e-4 and cfg["model"]["input_size"] == 32


def test_config_errors_before_training(tmp_path, data_dirs):
    """Unknown task, bad task keyword and missing data fail in train() before
    any output is written, naming the key."""
    tr, va = data_dirs
    out = tmp_path / "run"
    bad_task = validate_config({"model": {"task": "no-such-task"}})
    with pytest.raises(ConfigError, match=r"model\.task"):
        T.train(bad_task, out, progress=False)
    bad_kw = validate_config({"model": {"task": "fake", "bogus_width": 3}})
    with pytest.raises(ConfigError, match=r"model\.bogus_width"):
        T.train(bad_kw, out, progress=False)
    missing = validate_config({"model": {"task": "fake", "input_size": 32},
                               "data": {"train": str(tmp_path / "nowhere"), "val": str(va)}})
    with pytest.raises(ConfigError, match=r"data\.train"):
        T.train(missing, out, progress=False)
    missing_val = validate_config({"model": {"task": "fake", "input_size": 32},
                                   "data": {"train": str(tr), "val": "no-such-split"}})
    with pytest.raises(ConfigError, match=r"data\.val"):
        T.train(missing_val, out, progress=False)
    assert not out.exists()
    # the CLI turns it into exit code 2 with the key in the message
    cfg = write_config(tmp_path, config_text(tr, va, extra_train="batch_size = 'x'").replace("batch_size = 4\n", ""))
    assert T.main(["--config", str(cfg), "--out", str(out), "--no-progress"]) == 2


def test_shipped_configs_validate():
    files = sorted(CONFIG_DIR.glob("*.toml"))
    names = {p.stem for p in files}
    assert {"hybrid", "pwc", "pwc_disc", "hybrid_disc", "heatmap", "distribution", "direct", "cascade", "dsc",
            "compact"} <= names
    for p in files:
        cfg = load_config(p)
        assert cfg["data"]["val"] == "holdout", p  # never select models on the reported test sets
    dsc = load_config(CONFIG_DIR / "dsc.toml")
    assert dsc["optim"]["name"] == "rmsprop" and dsc["optim"]["momentum"] == 0.9
    assert dsc["optim"]["weight_decay"] == 1e-4 and dsc["data"]["augment"] == "paper2"
    assert dsc["model"]["input_size"] == 256
    assert dsc["optim"]["lr"] == 1e-4 and dsc["optim"]["lr_gamma"] == 0.1 and len(dsc["optim"]["lr_milestones"]) == 2
    assert load_config(CONFIG_DIR / "cascade.toml")["model"]["input_size"] == 112  # DAN-style, 3 stages
    assert load_config(CONFIG_DIR / "compact.toml")["model"]["input_size"] == 160
    assert load_config(CONFIG_DIR / "hybrid.toml")["model"]["input_size"] == 224


def test_light_preset_draws_inside_its_ranges():
    from pyflm.data import sample_params
    from training.dataset import AUGMENT_PRESETS

    rng = np.random.default_rng()
    draws = [sample_params(rng, AUGMENT_PRESETS["light"], 128) for _ in range(2000)]
    angles, scales = np.array([d.angle_deg for d in draws]), np.array([d.scale for d in draws])
    shifts = np.abs([d.shift for d in draws])
    assert np.abs(angles).max() <= 20 and np.abs(angles).max() > 18  # +-20 degrees, not paper 1's 30
    assert 0.8 <= scales.min() < 0.81 and 0.99 < scales.max() <= 1.0
    assert shifts.max() <= 0.03 * 128 and max(abs(d.brightness - 1) for d in draws) <= 0.1
    assert load_config(CONFIG_DIR / "fast_light.toml")["data"]["augment"] == "light"


# ---------------------------------------------------------------------------
# dataset and sampler
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("augment", ["none", "paper1", "paper2", "light"])
def test_dataset_items_map_back_exactly(data_dirs, augment):
    from training.dataset import AUGMENT_PRESETS

    samples = load_folder(data_dirs[0])
    ds = LandmarkDataset(samples, 32, AUGMENT_PRESETS[augment], seed=5)
    for i in (0, 3):
        item = ds[(i, 2)]
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
        assert item["landmarks"].shape == (K, 2) and item["landmarks"].dtype == torch.float64
        assert item["visibility"].shape == (K,) and item["matrix"].shape == (2, 3)
        pts = item["landmarks"].numpy()
        if augment != "none" and not np.allclose(transform_points(item["matrix"].numpy(), samples[i].landmarks), pts):
            # flipped: the matrix maps point j to crop point mirror^-1(j)
            from pyflm.data import get_scheme

            pts = pts[get_scheme("68").mirror_array]
        back = transform_points(invert_affine(item["matrix"].numpy()), pts)
        np.testing.assert_allclose(back, samples[i].landmarks, atol=1e-9)
        np.testing.assert_array_equal(item["image_landmarks"].numpy(), samples[i].landmarks)
        # the same (index, epoch) gives the same crop; another epoch another one
        again = ds[(i, 2)]
        assert torch.equal(again["image"], item["image"])
        if augment != "none":
            assert not torch.equal(ds[(i, 3)]["landmarks"], item["landmarks"])
    # plain crop: the paper's ground-truth square, landmarks centred
    if augment == "none":
        cx, cy, side = square_from_landmarks(samples[0].landmarks)
        m = ds[0]["matrix"].numpy()
        np.testing.assert_allclose(m[0, 0], 32 / side)
        np.testing.assert_allclose(ds[0]["landmarks"].numpy().mean(0), (15.5, 15.5), atol=1e-9)
        # normalised with the ImageNet statistics: a black pixel is -mean/std
        assert ds[0]["image"].min() < -1.5


def test_dataset_bad_images(tmp_path, data_dirs):
    samples = load_folder(data_dirs[0])[:2]
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        load_image(tmp_path / "nothere.png")
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="corrupt.png"):
        load_image(bad)
    samples[1].image_path = bad
    ds = LandmarkDataset(samples, 32)
    with pytest.raises(ValueError, match="corrupt.png"):
        ds[1]


def test_sampler_resume_and_shards():
    full = ResumableSampler(7, seed=1)
    it = iter(full)
    stream = [next(it) for _ in range(30)]
    assert sorted(i for i, e in stream[:7]) == list(range(7)) and {e for _, e in stream[:7]} == {0}
    for start in (0, 3, 7, 12):
        it = iter(ResumableSampler(7, seed=1, start=start))
        assert [next(it) for _ in range(10)] == stream[start:start + 10]
    shards = [ResumableSampler(7, seed=1, rank=r, num_replicas=2) for r in range(2)]
    got = [[x for x, _ in zip(iter(s), range(4))] for s in shards]
    padded = [i for i, _ in stream[:7]] + [stream[0][0]]  # padded by wrapping, like DistributedSampler
    assert [i for i, _ in got[0]] == padded[0::2] and [i for i, _ in got[1]] == padded[1::2]
    assert [x for x, _ in zip(iter(ResumableSampler(7, seed=1, rank=1, num_replicas=2, start=2)), range(2))] == got[1][2:]


def test_holdout_split_groups_photos():
    from pyflm.data import Sample

    pts = make_landmarks(np.random.default_rng(0), 48)
    samples = [Sample(f"/x/{i // 2}_{i % 2 + 1}.jpg", pts, dataset="afw") for i in range(20)]
    samples += [Sample(f"/y/h{i}.jpg", pts, dataset="helen") for i in range(20)]
    tr, va = holdout_split(samples, 0.25, seed=4)
    assert len(tr) + len(va) == 40 and 9 <= len(va) <= 12
    photos = lambda ss: {s.image_path.stem.split("_")[0] for s in ss if s.dataset == "afw"}  # noqa: E731
    assert not photos(tr) & photos(va)
    assert holdout_split(samples, 0.25, seed=4)[1] == va


def test_extra_train_joins_training_only(tmp_path, data_dirs):
    """data.extra_train adds samples to training after the held-out photos are
    chosen: the validation set is that of data.train alone."""
    tr, va = data_dirs
    plain = validate_config({"model": {"task": "fake"}, "data": {"train": str(tr), "val_fraction": 0.3}})
    extra = validate_config({"model": {"task": "fake"},
                             "data": {"train": str(tr), "val_fraction": 0.3, "extra_train": [str(va)]}})
    tr0, va0 = T.build_datasets(plain, 32)
    tr1, va1 = T.build_datasets(extra, 32)
    paths = lambda ds: [s.image_path for s in ds.samples]  # noqa: E731
    assert paths(va1) == paths(va0)
    assert paths(tr1) == paths(tr0) + [s.image_path for s in load_folder(va)]
    missing = validate_config({"model": {"task": "fake"},
                               "data": {"train": str(tr), "extra_train": [str(tmp_path / "nowhere")]}})
    with pytest.raises(ConfigError, match=r"data\.extra_train"):
        T.build_datasets(missing, 32)


# ---------------------------------------------------------------------------
# training, resume, checkpoints
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("warp", ["cpu", "device"])
def test_training_lowers_loss(tmp_path, data_dirs, warp):
    tr, va = data_dirs
    cfg = write_config(tmp_path, config_text(tr, va, steps=30, val_every=15, augment="paper1")
                       .replace('augment = "paper1"', f'augment = "paper1"\nwarp = "{warp}"'))
    out = tmp_path / "run"
    assert T.main(["--config", str(cfg), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    rows = read_log(out / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    first = np.mean([float(r["loss"]) for r in rows[:3]])
    last = np.mean([float(r["loss"]) for r in rows[-3:]])
    assert last < 0.5 * first, (first, last)
    vals = [float(r["val_nme"]) for r in rows if r["val_nme"]]
    assert len(vals) == 2 and all(math.isfinite(v) and v > 0 for v in vals)
    assert float(rows[-1]["lr"]) == pytest.approx(1e-3)  # milestone 15, gamma 0.1
    assert {"mse", "time_s"} <= set(rows[0])
    for name in ("last.pt", "best.pt"):
        ck = torch.load(out / name, weights_only=True)
        assert ck["config"]["model"]["task"] == "fake"
        assert {"torch", "numpy", "python", "cuda"} <= set(ck["rng"][0])
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 30
    assert not list(out.glob("*.tmp"))


@pytest.mark.parametrize("workers,warp", [(0, "cpu"), (2, "cpu"), (2, "device")])
def test_resume_continues_exactly(tmp_path, data_dirs, workers, warp):
    """Stop after 4 steps, resume to 8: steps 5..8 (losses, lr, val NME) and
    the final weights equal those of an uninterrupted 8-step run (also with
    2 persistent workers: augmentation draws depend on (seed, epoch, index)
    only; and with the batched device warp, data.warp = "device")."""
    tr, va = data_dirs
    cfg = write_config(tmp_path, config_text(tr, va, steps=8, val_every=4, augment="paper2")
                       .replace("num_workers = 0", f"num_workers = {workers}")
                       .replace('augment = "paper2"', f'augment = "paper2"\nwarp = "{warp}"'))
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["--config", str(cfg), "--device", "cpu", "--no-progress"]
    assert T.main(args + ["--out", str(a)]) == 0
    assert T.main(args + ["--out", str(b), "--max-steps", "4"]) == 0
    assert torch.load(b / "last.pt", weights_only=True)["step"] == 4
    # a crash after the checkpoint leaves extra log rows; resume drops them
    with (b / "log.csv").open("a") as f:
        f.write("5,0,0,123,123,\n")
    assert T.main(args + ["--out", str(b), "--resume"]) == 0
    ra, rb = read_log(a / "log.csv"), read_log(b / "log.csv")
    assert [r["step"] for r in rb] == [str(s) for s in range(1, 9)]
    for x, y in zip(ra, rb):
        assert (x["loss"], x["mse"], x["lr"], x["val_nme"]) == (y["loss"], y["mse"], y["lr"], y["val_nme"]), x["step"]
    ca, cb = (torch.load(p / "last.pt", weights_only=True) for p in (a, b))
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    assert ca["consumed"] == cb["consumed"] == 8 * 4
    assert torch.equal(ca["rng"][0]["torch"], cb["rng"][0]["torch"])


def test_resume_with_a_changed_optim_section_uses_it(tmp_path, data_dirs):
    """--resume with a new [optim] (the warning says the new one is used): the
    learning rate from the resumed step on is the new schedule's, as in a run
    that had it from the start, and the new weight decay is in force; the
    optimizer and scheduler state dicts alone would have kept the old ones."""
    tr, va = data_dirs
    old = write_config(tmp_path, config_text(tr, va, steps=10, val_every=5), "old.toml")
    new_text = (config_text(tr, va, steps=10, val_every=5).replace("lr = 0.01", "lr = 0.02")
                .replace("lr_milestones = [15]", "lr_milestones = [8]\nweight_decay = 0.001"))
    new = write_config(tmp_path, new_text, "new.toml")
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert T.main(["--config", str(old), "--out", str(run), "--max-steps", "5", "--device", "cpu",
                   "--no-progress"]) == 0
    with pytest.warns(UserWarning, match=r"\[optim\] differs"):
        assert T.main(["--config", str(new), "--out", str(run), "--resume", "--device", "cpu", "--no-progress"]) == 0
    assert T.main(["--config", str(new), "--out", str(straight), "--device", "cpu", "--no-progress"]) == 0
    got = [float(r["lr"]) for r in read_log(run / "log.csv")]
    want = [float(r["lr"]) for r in read_log(straight / "log.csv")]
    assert got[:5] == [pytest.approx(0.01)] * 5  # the old schedule up to the interruption
    assert got[5:] == pytest.approx(want[5:]) and want[5:] == pytest.approx([0.02, 0.02, 0.002, 0.002, 0.002])
    groups = torch.load(run / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert all(g["weight_decay"] == 0.001 and g["initial_lr"] == 0.02 for g in groups)
    # another optimizer cannot take this one's state: a clear error, nothing trained or written
    other = write_config(tmp_path, new_text.replace('name = "adam"', 'name = "rmsprop"'), "other.toml")
    before = (run / "last.pt").read_bytes()
    with pytest.raises(T.ConfigError, match="optim.name is 'rmsprop'.*trained with 'adam'"):
        T.train(load_config(other), run, resume=True, progress=False, device="cpu")
    assert (run / "last.pt").read_bytes() == before


def test_resume_sanity_check_is_not_vacuous(tmp_path, data_dirs):
    """A resume that restarted the data stream (consumed = 0) would diverge:
    the test above can fail."""
    tr, va = data_dirs
    cfg = load_config(write_config(tmp_path, config_text(tr, va, steps=2, val_every=1)))
    T.train(cfg, tmp_path / "a", progress=False, device="cpu")
    ck = T.load_checkpoint(tmp_path / "a" / "last.pt")
    ck["consumed"] = 0
    T.save_checkpoint(tmp_path / "a" / "last.pt", {k: v for k, v in ck.items() if k not in ("format", "version")})
    T.train(cfg, tmp_path / "a", resume=True, max_steps=3, progress=False, device="cpu")
    T.train(cfg, tmp_path / "c", max_steps=3, progress=False, device="cpu")
    la, lc = read_log(tmp_path / "a" / "log.csv"), read_log(tmp_path / "c" / "log.csv")
    assert la[2]["loss"] != lc[2]["loss"]


def test_truncated_checkpoint_clear_error(tmp_path, data_dirs):
    tr, va = data_dirs
    cfg = write_config(tmp_path, config_text(tr, va, steps=2, val_every=2))
    out = tmp_path / "run"
    assert T.main(["--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    p = out / "last.pt"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(T.CheckpointError, match=r"last\.pt.*truncated or corrupt"):
        T.load_checkpoint(p)
    assert T.main(["--config", str(cfg), "--out", str(out), "--resume", "--no-progress"]) == 2
    with pytest.raises(T.CheckpointError, match="not found"):
        T.load_checkpoint(tmp_path / "missing.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(T.CheckpointError, match="not a pyflm training checkpoint"):
        T.load_checkpoint(tmp_path / "other.pt")


def test_early_stopping(tmp_path, data_dirs):
    """lr ~ 0: the val NME never improves after the first validation, so with
    patience 2 training stops at the third validation."""
    tr, va = data_dirs
    text = config_text(tr, va, steps=50, val_every=1, extra_train="patience = 2").replace("lr = 0.01", "lr = 1e-30")
    summary = T.train(load_config(write_config(tmp_path, text)), tmp_path / "es", progress=False, device="cpu")
    assert summary["stopped_early"] and summary["steps"] == 3 and summary["best_step"] == 1
    ck = T.load_checkpoint(tmp_path / "es" / "last.pt")
    assert ck["bad_validations"] == 2 and ck["step"] == 3
    assert T.load_checkpoint(tmp_path / "es" / "best.pt")["step"] == 1


def test_max_minutes_stops_at_the_first_check_after_the_budget(tmp_path, data_dirs):
    """train.max_minutes: a spent budget is seen at the next log_every step, which
    is validated and checkpointed before the run ends; a generous one changes nothing."""
    tr, va = data_dirs
    text = config_text(tr, va, steps=9, val_every=100, extra_train="max_minutes = 1e-9").replace(
        "log_every = 1", "log_every = 3")
    summary = T.train(load_config(write_config(tmp_path, text)), tmp_path / "t", progress=False, device="cpu")
    assert summary["steps"] == 3 and summary["time_limit_reached"] and not summary["stopped_early"]
    assert T.load_checkpoint(tmp_path / "t" / "last.pt")["step"] == 3
    assert [r["step"] for r in read_log(tmp_path / "t" / "log.csv") if r["val_nme"]] == ["3"]
    cfg = write_config(tmp_path, config_text(tr, va, steps=4, val_every=2))
    assert T.main(["--config", str(cfg), "--out", str(tmp_path / "g"), "--no-progress", "--max-minutes", "60"]) == 0
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert summary["steps"] == 4 and not summary["time_limit_reached"]
    assert T.main(["--config", str(cfg), "--out", str(tmp_path / "z"), "--no-progress", "--max-minutes", "0"]) == 2
    with pytest.raises(ConfigError, match="train.max_minutes"):
        load_config(write_config(tmp_path, config_text(tr, va, extra_train="max_minutes = -1")))


def test_keep_every_keeps_snapshots(tmp_path, data_dirs):
    """train.keep_every: the checkpoints of steps 4 and 8 are kept beside last.pt, and are those steps'."""
    tr, va = data_dirs
    text = config_text(tr, va, steps=9, val_every=2, extra_train="keep_every = 4")
    T.train(load_config(write_config(tmp_path, text)), tmp_path / "k", progress=False, device="cpu")
    kept = sorted(p.name for p in (tmp_path / "k").glob("step_*.pt"))
    assert kept == ["step_0000004.pt", "step_0000008.pt"]
    assert [T.load_checkpoint(tmp_path / "k" / n)["step"] for n in kept] == [4, 8]


@pytest.mark.parametrize("task", ["fake+disc", "fake2+disc"])
def test_gan_schedule(tmp_path, data_dirs, task):
    tr, va = data_dirs
    cfg = load_config(write_config(tmp_path, config_text(tr, va, task=task, steps=3, val_every=3,
                                                         extra_optim="disc_lr = 0.001")))
    torch.manual_seed(0)
    T.train(cfg, tmp_path / "g", progress=False, device="cpu")
    ck = T.load_checkpoint(tmp_path / "g" / "last.pt")
    assert ck["consumed"] == 3 * 2 * 4  # detector twice per step
    assert ck["disc_optimizer"]["state"][0]["step"] == 3  # discriminator once per step
    assert ck["optimizer"]["state"][0]["step"] == 6
    rows = read_log(tmp_path / "g" / "log.csv")
    assert all(math.isfinite(float(r["d_loss"])) for r in rows)


def test_non_finite_loss_stops(tmp_path, data_dirs):
    tr, va = data_dirs
    cfg = load_config(write_config(tmp_path, config_text(tr, va, task="fake-nan", steps=5, val_every=5)))
    with pytest.raises(FloatingPointError, match="step 1: non-finite"):
        T.train(cfg, tmp_path / "nan", progress=False, device="cpu")


def test_init_from_starts_from_the_given_weights(tmp_path, data_dirs):
    """train.init_from (and --init-from): run b starts from run a's weights (an
    lr of ~0 keeps them), run c without it does not; resume ignores it."""
    tr, va = data_dirs
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    cfg_a = write_config(tmp_path, config_text(tr, va, steps=3, val_every=3), "a.toml")
    assert T.main(["--config", str(cfg_a), "--out", str(a), "--device", "cpu", "--no-progress"]) == 0
    still = config_text(tr, va, steps=1, val_every=1).replace("lr = 0.01", "lr = 1e-30")
    cfg_b = write_config(tmp_path, still.replace("seed = 3", f'seed = 3\ninit_from = "{a / "last.pt"}"'), "b.toml")
    assert T.main(["--config", str(cfg_b), "--out", str(b), "--device", "cpu", "--no-progress"]) == 0
    cfg_c = write_config(tmp_path, still, "c.toml")
    assert T.main(["--config", str(cfg_c), "--out", str(c), "--device", "cpu", "--no-progress",
                   "--init-from", str(a / "best.pt")]) == 0
    wa, wb, wc = (torch.load(p / "last.pt", weights_only=True)["model"] for p in (a, b, c))
    for k in wa:
        assert torch.equal(wa[k], wb[k]) and torch.equal(wa[k], wc[k]), k
    fresh = tmp_path / "fresh"
    assert T.main(["--config", str(cfg_c), "--out", str(fresh), "--device", "cpu", "--no-progress"]) == 0
    wf = torch.load(fresh / "last.pt", weights_only=True)["model"]
    assert not torch.equal(wa["fc.weight"], wf["fc.weight"])  # the check above can fail
    # --resume restores last.pt whole; init_from does not overwrite it
    assert T.main(["--config", str(cfg_b), "--out", str(fresh), "--device", "cpu", "--no-progress", "--resume",
                   "--max-steps", "2"]) == 0
    assert not torch.equal(torch.load(fresh / "last.pt", weights_only=True)["model"]["fc.weight"], wa["fc.weight"])


def test_init_from_errors_before_training(tmp_path, data_dirs, capsys):
    tr, va = data_dirs
    cfg = write_config(tmp_path, config_text(tr, va, steps=1, val_every=1))
    args = ["--config", str(cfg), "--device", "cpu", "--no-progress"]
    for bad, match in [(tmp_path / "missing.pt", "not found"),
                       (Path(__file__).resolve().parents[1] / "pyflm" / "weights" / "default.pt",
                        "does not fit this model")]:
        out = tmp_path / f"run-{bad.stem}"
        assert T.main(args + ["--out", str(out), "--init-from", str(bad)]) == 2
        err = capsys.readouterr().err
        assert "train.init_from" in err and match in err and str(bad) in err, err
        assert not out.exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"train\.init_from: .*junk\.pt"):
        T.load_init_weights(FakeNet(K), junk)


def test_init_from_the_bundled_model(tmp_path):
    """The bundled model file starts a compact run (stage 2 of the default model)."""
    from pyflm import deploy

    path = deploy.default_model_path()
    mf = deploy.load_model_file(path)
    task = T.build_task({"task": mf["task"], **mf["model_kwargs"]})
    T.load_init_weights(task.model, path)
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, mf["state_dict"][k]), k


def test_crop_to_image_inverse():
    rng = np.random.default_rng(0)
    m = np.stack([np.hstack([rng.normal(size=(2, 2)) + 2 * np.eye(2), rng.normal(size=(2, 1))]) for _ in range(3)])
    pts = rng.normal(size=(3, 5, 2)) * 50
    crop = np.stack([transform_points(m[i], pts[i]) for i in range(3)])
    back = T.crop_to_image(torch.from_numpy(crop), torch.from_numpy(m)).numpy()
    np.testing.assert_allclose(back, pts, atol=1e-9)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_torchrun_two_processes_on_the_cpu(tmp_path, data_dirs):
    """The same script under torchrun (2 processes, gloo on the CPU): it trains,
    rank 0 alone writes the log and checkpoints, the checkpoint holds both
    ranks' RNG states, and --resume under torchrun continues from it."""
    import os
    import subprocess
    import sys

    train_dir, val_dir = data_dirs
    cfg = write_config(tmp_path, config_text(train_dir, val_dir, task="compact", steps=4, val_every=2,
                                             extra_model="width = 0.25\ndecoder_channels = 8"))
    out = tmp_path / "run"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}

    def torchrun(*extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "training.train", "--config", str(cfg), "--out", str(out), "--device", "cpu", "--no-progress", *extra]
        return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)

    proc = torchrun()
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = T.load_checkpoint(out / "last.pt")
    assert ck["step"] == 4 and len(ck["rng"]) == 2 and (out / "best.pt").is_file()
    rows = read_log(out / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # one writer: no duplicated rows
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    proc = torchrun("--resume", "--max-steps", "6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert T.load_checkpoint(out / "last.pt")["step"] == 6
    assert [int(r["step"]) for r in read_log(out / "log.csv")] == [1, 2, 3, 4, 5, 6]

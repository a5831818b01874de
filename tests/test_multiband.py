"""N-band (multispectral) input on generated 13- and 4-band uint16 GeoTIFFs: training and exact resume of
both entry points, evaluation and retrieval, and the parts against independent oracles (numpy statistics,
the ImageNet layer on a grey RGB image, flips and rotations written with numpy)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torchvision
from test_entry_points import SCRIPTS, assert_same, metrics

from datasets.augment import BandPipeline
from datasets.bands import BandError, BandInput, band_input, band_statistics, rgb_composite
from datasets.check import check_dataset
from datasets.folder import decode_bands, read_bands
from datasets.synthetic import CLASSES, render
from errors import InputError
from models import EmbeddingNet
from models.embedding_net import adapt_first_conv

from conftest import MAX_ERROR_CHARS, REPO, run_script

EVALUATE = os.path.join(REPO, "scripts", "evaluate.py")
RETRIEVE = os.path.join(REPO, "scripts", "retrieve.py")
CHECK = os.path.join(REPO, "scripts", "check_dataset.py")
EPS32 = float(np.finfo(np.float32).eps)


def write_bands(path, array):
    tifffile.imwrite(path, array, photometric="minisblack", planarconfig="separate")


def make_band_tree(root, bands, classes=3, per_class=10, size=32):
    """``root/<class>/<class>_<k>.tif``: uint16 (bands, size, size) images, each band a different linear map of
    a synthetic scene's red, green or blue (so the classes differ as the scenes do), as reflectances run."""
    for label, name in enumerate(CLASSES[:classes]):
        os.makedirs(os.path.join(root, name))
        for k in range(per_class):
            rgb = render(name, np.random.default_rng([label, k]), size).astype(np.float64)   # (S, S, 3)
            image = np.stack([rgb[..., b % 3] * (8 + 3 * b) + 40 * b for b in range(bands)])  # (bands, S, S)
            write_bands(os.path.join(root, name, f"{name}_{k:02d}.tif"), image.astype(np.uint16))
    return root


@pytest.fixture(scope="module")
def band_data(tmp_path_factory):
    data = tmp_path_factory.mktemp("bands")
    make_band_tree(os.path.join(data, "ms13"), 13)
    make_band_tree(os.path.join(data, "ms4"), 4)
    return str(data)


def run(method, *flags, cwd):
    return run_script(SCRIPTS[method], *flags, cwd=cwd)


def small(data, dataset, out, run_name, epochs, *extra):
    return ["--data", data, "--dataset", dataset, "--bands", "all", "--image-size", "32", "-b", "8",
            "--num_workers", "0", "--pretrained", "none", "--epochs", str(epochs), "--lr", "0.01", "--out", out,
            "--run-name", run_name, *extra]


@pytest.fixture(scope="module")
def runs(band_data, tmp_path_factory):
    """MB on 13 bands (4,3,2 as RGB; images kept decoded) and MU on 4 bands (--rot90, decoded every epoch):
    two epochs straight, and one epoch resumed to two."""
    tmp = tmp_path_factory.mktemp("band_runs")
    out = str(tmp / "runs")
    setups = {"mb": ("ms13", "--rgb-bands", "4,3,2"), "mu": ("ms4", "--rot90", "--cache", "none")}
    for method, (dataset, *extra) in setups.items():
        for name, epochs in ((f"{method}-straight", 2), (f"{method}-split", 1)):
            done = run(method, *small(band_data, dataset, out, name, epochs, *extra), cwd=tmp)
            assert done.returncode == 0, done.stderr
        done = run(method, *small(band_data, dataset, out, f"{method}-split", 2, *extra, "--resume",
                                  os.path.join(out, f"{method}-split")), cwd=tmp)
        assert done.returncode == 0, done.stderr
    return {"out": out, "tmp": tmp, "stdout": done.stdout}


FLIP, ROT90 = "horizontal flip (p=0.5)", "rotation by k x 90 degrees"


@pytest.mark.slow
@pytest.mark.parametrize("method, channels, ops", [("mb", 13, [FLIP]), ("mu", 4, [FLIP, ROT90])])
def test_n_band_runs_train_and_resume_exactly(runs, method, channels, ops):
    straight, split = (os.path.join(runs["out"], f"{method}-{kind}") for kind in ("straight", "split"))
    assert [m["epoch"] for m in metrics(straight)] == [1, 2] == [m["epoch"] for m in metrics(split)]
    keys = ("loss", "loss_snca", "loss_ce", "knn_acc", "knn_acc_bank", "knn_acc_extracted")
    assert [[m[k] for k in keys] for m in metrics(straight)] == [[m[k] for k in keys] for m in metrics(split)]
    a, b = (torch.load(os.path.join(f, "checkpoints", "last.pt"), weights_only=True) for f in (straight, split))
    for part in ("model", "memory", "optimizer", "band_stats"):  # MU: the key encoder is in the memory entry
        assert_same(a[part], b[part], part)
    assert a["model"]["trunk.conv1.weight"].shape[1] == channels
    recorded = json.loads(Path(straight, "band_stats.json").read_text())
    assert recorded == a["band_stats"] and recorded["count"] == channels and recorded["dtype"] == "uint16"
    assert json.loads(Path(straight, "args.json").read_text())["augmentation"] == ", ".join(ops)


@pytest.mark.slow
def test_band_statistics_are_numpys_over_the_training_split(runs, band_data):
    """band_stats.json against numpy's float64 mean and std over the training files (32 px: read as they are)."""
    folder = os.path.join(runs["out"], "mb-straight")
    rows = Path(folder, "splits", "train.txt").read_text().splitlines()
    images = np.stack([read_bands(os.path.join(band_data, "ms13", row.split()[0])) for row in rows])
    images = images.astype(np.float64)                                                  # (21, 13, 32, 32)
    recorded = json.loads(Path(folder, "band_stats.json").read_text())
    # float64 sums of n = 21 x 32 x 32 terms per band: both within n * eps64 (relative) of the exact value
    tolerance = images[:, 0].size * np.finfo(np.float64).eps
    np.testing.assert_allclose(recorded["mean"], images.mean(axis=(0, 2, 3)), rtol=tolerance)
    np.testing.assert_allclose(recorded["std"], images.std(axis=(0, 2, 3)), rtol=tolerance)
    assert recorded["bands"] == list(range(1, 14)) and recorded["rgb_bands"] == [4, 3, 2]


def test_chunked_statistics_equal_numpy_on_any_chunking():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 65536, (37, 5, 9, 7), dtype=np.uint16)
    x = images.astype(np.float64)
    tolerance = x[:, 0].size * np.finfo(np.float64).eps  # float64 sums of n terms: n * eps64 relative
    for chunk in (1, 4, 37):
        mean, std = band_statistics(torch.from_numpy(images).split(chunk))
        np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=tolerance)
        np.testing.assert_allclose(std, x.std(axis=(0, 2, 3)), rtol=tolerance)


@pytest.mark.parametrize("rgb", [(2, 1, 0), None])
def test_three_bands_get_their_own_filters_not_the_files_order(rgb):
    """Bands 2, 3, 4 of Sentinel-2 are blue, green, red (--bands 2,3,4 --rgb-bands 4,3,2: positions 2, 1, 0): band
    4 gets ImageNet's red filter. Without --rgb-bands every band gets the mean filter, as for any N (x 3/3 = 1)."""
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18().state_dict()
    w = imagenet["conv1.weight"]                                                          # (64, 3, 7, 7)
    adapted = EmbeddingNet("resnet18", 16, 3, imagenet, in_channels=3, rgb=rgb, n_band=True).trunk.conv1.weight
    for band in range(3):
        want = w[:, rgb.index(band)] if rgb else w.mean(dim=1)
        assert torch.equal(adapted[:, band].detach(), want * (3 / 3)), band
    rgb_images = EmbeddingNet("resnet18", 16, 3, imagenet).trunk.conv1.weight            # 8-bit RGB: as loaded
    assert torch.equal(rgb_images.detach(), w)


def test_first_layer_takes_imagenets_filters_and_answers_a_grey_image_as_imagenet():
    """A random state dict stands in for ImageNet's (no download): the red, green, blue bands (4, 3, 2 of 13)
    get its filters, every other band their mean, all x 3/13; an image of 13 equal bands gives the RGB layer's
    output on the grey RGB image to float32 rounding."""
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18().state_dict()
    rgb = (3, 2, 1)  # positions of bands 4, 3, 2 among bands 1..13
    net = EmbeddingNet("resnet18", 16, 3, imagenet, in_channels=13, rgb=rgb)
    w, adapted = imagenet["conv1.weight"], net.trunk.conv1.weight.detach()             # (64, 3, 7, 7), (64, 13, 7, 7)
    assert torch.equal(adapted[:, list(rgb)], w * (3 / 13))
    others = [b for b in range(13) if b not in rgb]
    assert torch.equal(adapted[:, others], (w.mean(dim=1, keepdim=True) * (3 / 13)).expand(-1, 10, -1, -1))
    assert torch.equal(net.trunk.layer1[0].conv1.weight, imagenet["layer1.0.conv1.weight"])

    grey = torch.randn(2, 1, 32, 32)
    ours = net.trunk.conv1(grey.expand(-1, 13, -1, -1))                                  # (2, 64, 16, 16)
    theirs = torch.nn.functional.conv2d(grey.expand(-1, 3, -1, -1), w, stride=2, padding=3)
    # Each output sums 13 x 49 (ours) and 3 x 49 (theirs) products, after ~4 roundings in building the weights:
    # |error| <= (13 x 49 + 3 x 49 + 4) eps32 sum |w| |x|, and sum over the 13 adapted filters of |w| <= sum of
    # the 3 RGB filters' |w|, so the RGB layer on |x| bounds both.
    scale = torch.nn.functional.conv2d(grey.abs().expand(-1, 3, -1, -1), w.abs(), stride=2, padding=3)
    assert ((ours - theirs).abs() <= (16 * 49 + 4) * EPS32 * scale).all()


def test_without_rgb_bands_every_band_gets_the_mean_filter():
    w = torch.randn(8, 3, 7, 7)
    assert torch.equal(adapt_first_conv(w, 4), (w.mean(dim=1, keepdim=True) * 0.75).expand(-1, 4, -1, -1))


def test_band_pipeline_standardises_flips_and_rotates_as_numpy():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 4000, (6, 4, 8, 8), dtype=np.uint16)
    mean, std = (100.0, 200.0, 300.0, 400.0), (10.0, 20.0, 0.0, 40.0)  # a constant band (std 0) is only centred
    pipeline = BandPipeline(BandInput((0, 1, 2, 3), 4, "uint16").with_stats(mean, std), rot90=True)
    params = {"flip": torch.tensor([0, 1, 0, 1, 0, 1]).bool(), "rot90": torch.tensor([0, 0, 1, 2, 3, 3])}
    out = pipeline.train(torch.from_numpy(images), params=params).numpy()
    x = (images.astype(np.float32) - np.float32(mean)[:, None, None]) / np.float32((10, 20, 1, 40))[:, None, None]
    for i in range(6):
        want = x[i][..., ::-1] if params["flip"][i] else x[i]
        np.testing.assert_array_equal(out[i], np.rot90(want, int(params["rot90"][i]), axes=(1, 2)))
    np.testing.assert_array_equal(pipeline.eval(torch.from_numpy(images)).numpy(), x)
    drawn = pipeline.draw(4000, "cpu", torch.Generator().manual_seed(0))
    assert set(drawn) == {"flip", "rot90"} and abs(drawn["flip"].float().mean() - 0.5) < 0.05  # ~5 sigma
    assert sorted(drawn["rot90"].unique().tolist()) == [0, 1, 2, 3]


def test_rgb_composite_stretches_each_band_from_its_percentiles():
    images = torch.arange(2 * 5 * 10 * 10, dtype=torch.float32).view(2, 5, 10, 10).to(torch.uint16)
    out = rgb_composite(images, (3, 2, 1))                                              # (2, 3, 10, 10)
    x = images.numpy().astype(np.float64)
    for i in range(2):
        for c, band in enumerate((3, 2, 1)):
            low, high = np.percentile(x[i, band], (2, 98))
            want = np.rint(np.clip((x[i, band] - low) / (high - low), 0, 1) * 255)
            np.testing.assert_array_equal(out[i, c].numpy(), want)


@pytest.mark.slow
def test_a_file_with_another_band_count_or_dtype_is_refused_by_name(band_data, tmp_path):
    data = tmp_path / "data"
    make_band_tree(str(data / "odd"), 4, per_class=7)
    odd_count, odd_dtype = data / "odd" / CLASSES[1] / "five.tif", data / "odd" / CLASSES[2] / "float.tif"
    write_bands(odd_count, np.zeros((5, 32, 32), np.uint16))
    write_bands(odd_dtype, np.zeros((4, 32, 32), np.float32))
    report = check_dataset(str(data / "odd"), "tif", bands="all")
    assert report["bands"] == "4 x uint16" and sorted(report["bad"]) == sorted([str(odd_count), str(odd_dtype)])
    assert {(k, p) for k, p, _ in report["problems"]} >= {("bands", str(odd_count)), ("bands", str(odd_dtype))}

    script = run_script(CHECK, "--data", data, "--dataset", "odd", "--bands", "all")
    assert script.returncode == 1
    assert "five.tif (5 x uint16" in script.stdout and "float.tif (4 x float32" in script.stdout
    done = run("mb", *small(str(data), "odd", str(tmp_path / "runs"), "r", 1), cwd=tmp_path)
    line = done.stderr.strip().splitlines()[-1]
    assert done.returncode != 0 and line.startswith("error: ") and len(line) <= MAX_ERROR_CHARS, line
    # its own message, not among "unreadable image(s)": the band count of most files, each odd file's own
    assert "2 file(s)" in line and "differ from most files' 4 x uint16 bands" in line and "unreadable" not in line
    assert "five.tif (5 x uint16" in line and "float.tif (4 x float32" in line and "--skip-bad-images" in line
    assert not os.path.exists(tmp_path / "runs" / "r")
    with pytest.raises(InputError, match="five.tif has 5 band"):  # without the start-up check, when decoded
        decode_bands(str(odd_count), 32, band_input("all", None, 4, "uint16"))
    with pytest.raises(BandError, match="--bands 1,6: the files have 4 bands"):
        band_input("1,6", None, 4, "uint16")


def test_multi_band_files_without_bands_are_one_short_line_that_suggests_bands(band_data, tmp_path):
    """30 13-band TIFFs read as RGB (no --bands): training refuses them in one line that says --bands reads them,
    names three and counts the rest; check_dataset.py reports them as multi-band, with the same fix."""
    flags = [a for a in small(band_data, "ms13", str(tmp_path / "runs"), "r", 1) if a not in ("--bands", "all")]
    done = run("mb", *flags, "--imgEXT", "tif", cwd=tmp_path)
    line = done.stderr.strip().splitlines()[-1]
    assert done.returncode != 0 and line.startswith("error: 30 file(s)") and len(line) <= MAX_ERROR_CHARS, line
    assert "13-band uint16 TIFFs, which only --bands reads" in line and "--bands all" in line
    assert line.count(".tif") == 3 and "and 27 more" in line
    assert not os.path.exists(tmp_path / "runs")
    script = run_script(CHECK, "--data", band_data, "--dataset", "ms13", "--imgEXT", "tif")
    assert script.returncode == 1 and "multiband: 30 - multi-band TIFF that only --bands reads" in script.stdout


@pytest.mark.slow
def test_evaluate_retrieve_and_make_tables_on_a_13_band_run(runs, band_data, tmp_path):
    folder = os.path.join(runs["out"], "mb-straight")
    done = run_script(EVALUATE, folder, "--device", "cpu", "--num_workers", "0", "--tsne-points", "6")
    assert done.returncode == 0, done.stderr
    out = Path(folder, "eval", "test")
    assert all((out / name).stat().st_size > 0 for name in ("results.json", "retrieval_examples.png", "tsne.png"))

    # the saved query embeddings are the checkpoint's network on the files standardised with band_stats.json
    saved = np.load(out / "embeddings.npz")
    stats = json.loads(Path(folder, "band_stats.json").read_text())
    images = np.stack([read_bands(os.path.join(band_data, "ms13", p)) for p in saved["query_paths"]])
    mean, std = (np.float32(stats[k])[:, None, None] for k in ("mean", "std"))
    x = (images.astype(np.float32) - mean) / std
    state = torch.load(os.path.join(folder, "checkpoints", "best.pt"), weights_only=True)
    net = EmbeddingNet("resnet18", 128, 3, in_channels=13)
    net.load_state_dict(state["model"])
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(x))[0].numpy()
    # The same float32 network; oneDNN may choose other kernels for another batch shape, so the unit vectors
    # agree to float32 noise, not bitwise. That noise, measured for this network at this size in test_ddp's
    # evaluation test (batches of other shapes, 1 or 2 threads, the kernels of tests/other_cpus.sh): at most
    # 3.1e-7; the tolerance is about 30 times that.
    np.testing.assert_allclose(saved["queries"], want, atol=1e-5)

    query = os.path.join(band_data, "ms13", saved["query_paths"][0])
    page = tmp_path / "page.html"
    done = run_script(RETRIEVE, "--checkpoint", folder, "--gallery", os.path.join(band_data, "ms13"), "--query", query,
                      "--k", "3", "--device", "cpu", "--html", page)
    assert done.returncode == 0, done.stderr
    ranked = [line.split() for line in done.stdout.splitlines() if line[:4].strip().isdigit()]
    assert query in [r[2] for r in ranked] and page.read_text().count("data:image/jpeg;base64,") == 4

    tables = run_script(os.path.join(REPO, "scripts", "make_tables.py"), folder, "--out", tmp_path / "tables")
    assert tables.returncode == 0, tables.stderr
    assert "SNCA-CE" in (tmp_path / "tables" / "tables.md").read_text()


def test_eurosat_ms_presets_read_all_13_bands_and_find_the_archive_layout(tmp_path):
    from datasets.presets import PRESETS, dataset_root, preset_mismatch

    for name in ("EuroSAT_MS", "EuroSATallBands"):
        preset = PRESETS[name]
        assert (preset.ext, preset.classes, preset.images, preset.bands, preset.rgb_bands) == (
            "tif", 10, 27000, "all", "4,3,2")
    inner = tmp_path / "EuroSATallBands" / "ds" / "images" / "remote_sensing" / "otherDatasets" / "sentinel_2" / "tif"
    (inner / "Forest").mkdir(parents=True)
    assert dataset_root(str(tmp_path), "EuroSATallBands") == str(inner)
    assert "27000 images" in preset_mismatch("EuroSAT_MS", 10, 26999)


def test_resuming_with_other_bands_is_refused_in_one_line():
    from types import SimpleNamespace

    from lib.training.checkpoint import check_compatible

    args = {"memory": "mb", "method": "snca-ce", "model": "resnet18", "dim": 128, "dataset": "ms13", "image_size": 32}
    saved = {"args": {**args, "bands": "all"}, "num_train": 21, "num_classes": 3}
    check_compatible(saved, SimpleNamespace(**args, bands="all"), 21, 3)
    for other in (None, "4,3,2"):
        with pytest.raises(InputError, match="the checkpoint has bands='all'"):
            check_compatible(saved, SimpleNamespace(**args, bands=other), 21, 3)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mb", "mu"])
def test_two_ranks_train_n_band_images_as_one_process(method, band_data, tmp_path):
    """torchrun on 2 Gloo ranks, 4 bands with --rot90, against one one-thread process in test_ddp's setting (the
    epoch in one batch, BatchNorm over the global batch, MU's key encoder's too (--key-bn sync), a learning rate low
    enough that the two summation orders stay within test_ddp.RTOL)."""
    from test_ddp import assert_close_metrics, launch

    flags = ["--data", band_data, "--dataset", "ms4", "--bands", "all", "--rot90", "--image-size", "32", "-b", "32",
             "--num_workers", "0", "--pretrained", "none", "--device", "cpu", "--lr", "1e-4", "--epochs", "2",
             "--sync-bn"]
    one = launch(method, *flags, "--out", str(tmp_path / "one"), "--run-name", "r", ranks=1, cwd=tmp_path)
    two = launch(method, *flags, "--out", str(tmp_path / "two"), "--run-name", "r", cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    folders = [str(tmp_path / name / "r") for name in ("one", "two")]
    assert_close_metrics(metrics(folders[1]), metrics(folders[0]), range(1, 3))
    assert Path(folders[0], "band_stats.json").read_text() == Path(folders[1], "band_stats.json").read_text()


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32", "float64"])
def test_decoding_keeps_the_files_type_and_resizes_as_torchvision(dtype, tmp_path):
    """Each band resized as torchvision's Resize resizes a float tensor (bilinear, antialiased), integers rounded
    back to the files' type; kept at that type (float64 as float32), so a uint16 archive takes 2 bytes a value; a
    file already at the size is kept bit for bit. Band 3 before band 1: the chosen bands in the chosen order."""
    from datasets.cache import decode_all

    rng = np.random.default_rng(0)
    top = np.iinfo(dtype).max if dtype.startswith(("uint", "int")) else 1.0
    arrays = [(rng.random((4, size, size)) * top).astype(dtype) for size in (40, 32)]
    paths = []
    for k, array in enumerate(arrays):
        os.makedirs(tmp_path / "c", exist_ok=True)
        paths.append(str(tmp_path / "c" / f"{k}.tif"))
        write_bands(paths[-1], array)
    layout = band_input("3,1", None, 4, dtype)
    decoded = decode_all([(p, 0) for p in paths], 32, 0, layout)                                # (2, 2, 32, 32)
    assert decoded.dtype == torch.from_numpy(np.empty(0, layout.stored_dtype)).dtype and decoded.shape == (2, 2, 32, 32)
    chosen = torch.from_numpy(arrays[0][[2, 0]].astype(np.float64))                            # (2, 40, 40)
    want = torchvision.transforms.functional.resize(chosen.float(), [32, 32], antialias=True)
    if dtype.startswith(("uint", "int")):
        want = want.round().clamp(np.iinfo(dtype).min, np.iinfo(dtype).max)
    assert torch.equal(decoded[0].double(), want.to(decoded.dtype).double())
    assert np.array_equal(decoded[1].numpy(), arrays[1][[2, 0]].astype(layout.stored_dtype))


@pytest.mark.slow
@pytest.mark.parametrize("dtype, scale", [("uint8", 1 / 4), ("float32", 1e-4)])
def test_eight_bit_and_float_bands_train(dtype, scale, tmp_path):
    """The same generated scenes as 3-band uint8 (reflectances / 4) and float32 (reflectances x 1e-4) files: MB
    trains a first epoch from them, with finite losses, and records their type and the training split's mean per
    band (numpy's float64 mean over the training files)."""
    data = tmp_path / "data"
    make_band_tree(str(data / "uint16"), 3)
    for path in sorted((data / "uint16").rglob("*.tif")):
        target = data / dtype / path.relative_to(data / "uint16")
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bands(str(target), (read_bands(str(path)) * scale).astype(dtype))
    done = run("mb", *small(str(data), dtype, str(tmp_path / "runs"), "run", 1), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "runs" / "run"
    assert all(np.isfinite(m["loss"]) for m in metrics(str(folder)))
    recorded = json.loads(Path(folder, "band_stats.json").read_text())
    train = [line.split()[0] for line in Path(folder, "splits", "train.txt").read_text().splitlines()]
    files = np.stack([read_bands(str(data / dtype / name)).astype(np.float64) for name in train])  # (N, 3, S, S)
    assert recorded["dtype"] == dtype and recorded["count"] == 3
    # float64 sums of n values per band (float32 files: exact in float64): both within n * eps64 of the exact mean
    tolerance = files[:, 0].size * np.finfo(np.float64).eps
    np.testing.assert_allclose(recorded["mean"], files.mean(axis=(0, 2, 3)), rtol=tolerance)

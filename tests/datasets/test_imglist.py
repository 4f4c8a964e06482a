"""Image lists: OpenOOD's files read unchanged, bad lines named by line, where lists and images are looked
up, the benchmark definitions, and one-vs-rest derivation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from omegaconf import OmegaConf
from PIL import Image

from openood_ext.config import load_config
from openood_ext.datasets import BENCHMARKS
from openood_ext.datasets.image_modes import convert_image
from openood_ext.datasets.imglist import ImglistDataset, read_imglist
from openood_ext.errors import ConfigError, DataError

# Verbatim lines of OpenOOD v1.5's benchmark_imglist files (cifar10/ and cifar100/ lists of its
# benchmark_imglist.zip), one per format OpenOOD uses: ID with class index, OOD with -1, nested folders,
# upper-case extensions.
OPENOOD_LINES = """\
cifar10/train/cat/3975.png 3
cifar10/test/airplane/0298.png 0
cifar100/test/streetcar/0065.png -1
tin/val/images/val_2.JPEG -1
mnist/test/8_8486.jpg -1
texture/gauzy/gauzy_0138.jpg -1
places365/field-cultivated/Places365_val_00032701.jpg -1
svhn/test/022008_2.jpg -1
"""


def test_openood_lines_parse_unchanged(tmp_path):
    f = tmp_path / "openood.txt"
    f.write_bytes(OPENOOD_LINES.encode())
    entries = read_imglist(f)
    assert [(e.path, e.label, e.line) for e in entries[:2]] == [("cifar10/train/cat/3975.png", 3, 1),
                                                                 ("cifar10/test/airplane/0298.png", 0, 2)]
    assert entries[3].path == "tin/val/images/val_2.JPEG" and entries[3].label == -1
    assert len(entries) == 8


def test_windows_line_endings_blank_lines_and_comments(tmp_path):
    f = tmp_path / "crlf.txt"
    f.write_bytes(b"# made by hand\r\na/1.png 0\r\n\r\nb/2.png 1\r\n")
    entries = read_imglist(f)
    assert [(e.path, e.label, e.line) for e in entries] == [("a/1.png", 0, 2), ("b/2.png", 1, 4)]


@pytest.mark.parametrize("bad, line, fragment", [
    ("a/1.png 0\nb/2.png\n", 2, "expected '<path> <label>'"),
    ("a/1.png 0\n\n# note\nb/2.png cat\n", 4, "label must be an integer, got 'cat'"),
    ("a/1.png 0.5\n", 1, "label must be an integer"),
])
def test_bad_lines_are_named_by_file_and_line(tmp_path, bad, line, fragment):
    f = tmp_path / "bad.txt"
    f.write_text(bad)
    with pytest.raises(DataError) as exc:
        read_imglist(f)
    assert str(exc.value).startswith(f"{f}:{line}: ") and fragment in str(exc.value)


def make_bench(tmp_path: Path, **extra):
    spec = {"name": "imglist", "num_classes": 2, "data_root": str(tmp_path / "data"),
            "id": {"train": "train.txt", "val": "val.txt", "test": "test.txt"}, **extra}
    return BENCHMARKS.build(spec)


def test_lists_next_to_the_data_win_over_committed_ones(tmp_path):
    repo_lists, data_lists = tmp_path / "repo", tmp_path / "data" / "benchmark_imglist" / "x"
    for d in (repo_lists, data_lists):
        d.mkdir(parents=True)
    for name in ("train.txt", "val.txt", "test.txt"):
        (repo_lists / name).write_text("a.png 0\n")
    (data_lists / "test.txt").write_text("b.png 1\n")
    bench = make_bench(tmp_path, imglist_dir=[str(data_lists), str(repo_lists)], ood={"far": {"gone": "gone.txt"}})
    assert bench.split("id_test").imglist == data_lists / "test.txt"
    assert bench.split("id_train").imglist == repo_lists / "train.txt"
    assert bench.split("gone").imglist == repo_lists / "gone.txt"  # reported under the committed directory
    assert "not found" in bench.missing_reason(bench.split("gone"))


def test_image_dir_and_per_split_image_dir(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    for name in ("train.txt", "val.txt", "test.txt", "tex.txt"):
        (lists / name).write_text("set/img.png 0\n")
    for sub in ("images_largescale", "images_classic"):
        (tmp_path / "data" / sub / "set").mkdir(parents=True)
        Image.new("RGB", (4, 4), (30,) * 3 if sub == "images_classic" else (200,) * 3).save(tmp_path / "data" / sub / "set" / "img.png")
    bench = make_bench(tmp_path, imglist_dir=str(lists), image_dir="images_largescale",
                       ood={"far": {"tex": {"imglist": "tex.txt", "image_dir": "images_classic"}}},
                       preprocessor={"image_size": 4, "mean": [0, 0, 0], "std": [1, 1, 1]})
    assert bench.image_root_of(bench.split("id_test")) == tmp_path / "data" / "images_largescale"
    assert bench.image_root_of(bench.split("tex")) == tmp_path / "data" / "images_classic"
    id_img, _ = bench.dataset(bench.split("id_test"))[0]
    tex_img, tex_label = bench.dataset(bench.split("tex"))[0]
    assert id_img.mean() > 0.7 and tex_img.mean() < 0.2 and tex_label == -1
    with pytest.raises(ConfigError, match="needs 'imglist'"):
        make_bench(tmp_path, imglist_dir=str(lists), ood={"far": {"tex": {"image_dir": "x"}}})


@pytest.mark.parametrize("name, near, far, val", [
    ("cifar10", {"cifar100", "tin"}, {"mnist", "svhn", "texture", "places365"}, "val_tin.txt"),
    ("cifar100", {"cifar10", "tin"}, {"mnist", "svhn", "texture", "places365"}, "val_tin.txt"),
    ("imagenet200", {"ssb_hard", "ninco"}, {"inaturalist", "textures", "openimage_o"}, "val_openimage_o.txt"),
    ("imagenet", {"ssb_hard", "ninco"}, {"inaturalist", "textures", "openimage_o"}, "val_openimage_o.txt"),
])
def test_benchmark_definitions_follow_openood_v15(name, near, far, val, tmp_path):
    cfg = load_config([REPO / "configs" / "benchmarks" / f"{name}.yml"], [f"benchmark.data_root={tmp_path}"])
    bench = BENCHMARKS.build(cfg.benchmark)
    assert {s.name for s in bench.ood_sets("near")} == near and {s.name for s in bench.ood_sets("far")} == far
    assert bench.split("ood_val").imglist.name == val
    assert bench.split("id_train").imglist.name == f"train_{name}.txt"
    # OpenOOD's file names, looked up next to the data first
    assert cfg.benchmark.imglist_dir[0] == f"{tmp_path}/benchmark_imglist/{name}"
    with pytest.raises(DataError, match=f"openood-ext data prepare {name}"):
        bench.prepare()


def test_cifar_preprocessing_is_openoods(tmp_path):
    cfg = load_config([REPO / "configs" / "benchmarks" / "cifar10.yml"], [f"benchmark.data_root={tmp_path}"])
    pre = OmegaConf.to_container(cfg.benchmark.preprocessor)
    assert pre["mean"] == [0.4914, 0.4822, 0.4465] and pre["std"] == [0.2470, 0.2435, 0.2616]
    bench = BENCHMARKS.build(cfg.benchmark)
    from openood_ext.datasets.transforms import build_transform
    names = [type(t).__name__ for t in build_transform(bench.preprocessor, train=True).transforms]
    assert names == ["Resize", "CenterCrop", "RandomHorizontalFlip", "RandomCrop", "ToTensor", "Normalize"]
    crop = build_transform(bench.preprocessor, train=True).transforms[3]
    assert crop.padding == 4 and crop.size == (32, 32)


def test_data_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENOOD_EXT_DATA", str(tmp_path / "elsewhere"))
    cfg = load_config([REPO / "configs" / "benchmarks" / "cifar10.yml"])
    assert cfg.benchmark.data_root == str(tmp_path / "elsewhere")


# ------------------------------------------------------------------------------------------ one-vs-rest
def one_vs_rest(tmp_path, normal, **extra):
    lists = tmp_path / "lists"
    lists.mkdir(exist_ok=True)
    (lists / "train.txt").write_text("".join(f"tr/{c}/{i}.png {c}\n" for c in range(3) for i in range(4)))
    (lists / "val.txt").write_text("".join(f"va/{c}/0.png {c}\n" for c in range(3)))
    (lists / "test.txt").write_text("".join(f"te/{c}/{i}.png {c}\n" for c in range(3) for i in range(2)))
    spec = {"name": "cifar10_ad", "normal_class": normal, "num_classes": 3, "data_root": str(tmp_path / "data"),
            "imglist_dir": str(lists), "id": {"train": "train.txt", "val": "val.txt", "test": "test.txt"}, **extra}
    return BENCHMARKS.build(spec)


def test_one_vs_rest_derives_normal_and_anomaly_lists(tmp_path):
    bench = one_vs_rest(tmp_path, [2, 0])
    assert bench.num_classes == 2
    assert {e.label for e in read_imglist(bench.split("id_train").imglist)} == {0, 1}
    train = read_imglist(bench.split("id_train").imglist)
    assert [(e.path, e.label) for e in train if e.path.startswith("tr/2/")][0] == ("tr/2/0.png", 0)  # remapped
    anomalies = read_imglist(bench.split("anomalies").imglist)
    assert [e.path for e in anomalies] == ["te/1/0.png", "te/1/1.png"] and {e.label for e in anomalies} == {-1}
    assert bench.split("anomalies").group == "far"
    assert "normal_2-0" in str(bench.derived_dir)


def test_one_vs_rest_rejects_bad_normal_class(tmp_path):
    with pytest.raises(ConfigError, match="not a class of a 3-class set"):
        one_vs_rest(tmp_path, 3)
    with pytest.raises(ConfigError, match="derive their OOD set"):
        one_vs_rest(tmp_path, 0, ood={"far": {"x": "x.txt"}})


@pytest.mark.parametrize("name, lists", [("mnist", "benchmark_imglist/mnist"), ("fmnist", "benchmark_imglist/fmnist"),
                                         ("cifar10_ad", "benchmark_imglist/cifar10")])
def test_ad_benchmark_configs(name, lists, tmp_path):
    cfg = load_config([REPO / "configs" / "benchmarks" / f"{name}.yml"],
                      [f"benchmark.data_root={tmp_path}", "benchmark.normal_class=3"])
    bench = BENCHMARKS.build(cfg.benchmark)
    assert [s.name for s in bench.splits()] == ["id_train", "id_val", "id_test", "anomalies"]
    assert cfg.benchmark.imglist_dir[1] == lists
    if bench.split("id_test").imglist.is_file():  # committed full lists present: derived ones were written
        assert {e.label for e in read_imglist(bench.split("id_test").imglist)} == {0}


# ---------------------------------------------------------------- image modes (datasets/image_modes.py)
def _dataset_of(tmp_path, images: dict, mode: str):
    """An ImglistDataset over ``images`` (file name -> PIL image, saved as given) that returns raw pixels."""
    for name, img in images.items():
        img.save(tmp_path / name)
    (tmp_path / "list.txt").write_text("".join(f"{name} 0\n" for name in images))
    return ImglistDataset(tmp_path / "list.txt", tmp_path, transform=np.asarray, mode=mode)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    """v -> round(v * 255 / 65535): 0, 128, 129, 257, 1000, 32896, 65535 -> 0, 0, 1, 1, 4, 128, 255 (Pillow's
    own conversion gives 0, 128, 129, 255, 255, 255, 255)."""
    values = np.array([[0, 128, 129, 257, 1000, 32896, 65535]], np.uint16)
    ds = _dataset_of(tmp_path, {"grey16.png": Image.fromarray(values)}, "L")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    assert ds[0][0].tolist() == [[0, 0, 1, 1, 4, 128, 255]]
    rgb = _dataset_of(tmp_path, {"grey16.png": Image.fromarray(values)}, "RGB")[0][0]
    assert rgb.shape == (1, 7, 3) and (rgb == np.array([0, 0, 1, 1, 4, 128, 255])[None, :, None]).all()


def test_cmyk_palette_and_opaque_alpha_are_converted_by_hand_values(tmp_path):
    """CMYK (100, 50, 0, 60) -> RGB ((255-C)(255-K)/255, ...) = (119, 157, 195) and L = round(.299R+.587G+.114B)
    = 150; a palette with a transparent entry that no pixel uses, LA and RGBA fully opaque lose only alpha."""
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 5
    images = {"cmyk.jpg": Image.new("CMYK", (1, 1), (100, 50, 0, 60)), "pal.png": pal,
              "la.png": Image.fromarray(np.array([[[7, 255], [9, 255]]], np.uint8), "LA"),
              "rgba.png": Image.fromarray(np.array([[[1, 2, 3, 255]]], np.uint8), "RGBA")}
    ds = _dataset_of(tmp_path, {k: v for k, v in images.items() if k != "cmyk.jpg"}, "RGB")
    assert ds[0][0].tolist() == [[[10, 20, 30], [200, 100, 0]]]
    assert ds[1][0].tolist() == [[[7, 7, 7], [9, 9, 9]]]
    assert ds[2][0].tolist() == [[[1, 2, 3]]]
    assert np.asarray(convert_image(images["cmyk.jpg"], "RGB", "x")).tolist() == [[[119, 157, 195]]]
    assert np.asarray(convert_image(images["cmyk.jpg"], "L", "x")).tolist() == [[150]]
    assert np.asarray(convert_image(Image.new("CMYK", (1, 1), (0, 0, 0, 255)), "RGB", "x")).tolist() == [[[0, 0, 0]]]


@pytest.mark.parametrize("name, make", [
    ("rgba.png", lambda np: Image.fromarray(np.array([[[1, 2, 3, 255], [4, 5, 6, 0]]], np.uint8), "RGBA")),
    ("la.png", lambda np: Image.fromarray(np.array([[[7, 128]]], np.uint8), "LA")),
    ("float.tif", lambda np: Image.fromarray(np.array([[0.5, 2.0]], np.float32))),
    ("int32.tif", lambda np: Image.fromarray(np.array([[-5, 70000]], np.int32))),
])
def test_modes_without_a_defined_8_bit_image_are_refused_naming_the_file(tmp_path, name, make):
    ds = _dataset_of(tmp_path, {name: make(np)}, "RGB")
    with pytest.raises(DataError) as exc:
        ds[0]
    msg = str(exc.value)
    assert "\n" not in msg and str(tmp_path / name) in msg and "list.txt:1" in msg


def test_palette_with_a_used_transparent_entry_is_refused(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "pal.png", transparency=1)
    (tmp_path / "list.txt").write_text("pal.png 0\n")
    with pytest.raises(DataError, match=r"pal.png: image mode P has transparent pixels"):
        ImglistDataset(tmp_path / "list.txt", tmp_path, transform=lambda x: x, mode="L")[0]


def test_ad_score_tells_16_bit_images_apart(tmp_path):
    """The folder loader of ``openood-ext ad-score`` reads two different 16-bit images as different pixels
    (Pillow's clipping made both all-255)."""
    from openood_ext.pipelines.ad.infer import FolderDataset
    (tmp_path / "f").mkdir()
    for name, v in (("a.png", 20000), ("b.png", 40000)):
        Image.fromarray(np.full((4, 4), v, np.uint16)).save(tmp_path / "f" / name)
    ds = FolderDataset(tmp_path / "f", np.asarray, "L")
    assert [int(ds[i][0][0, 0]) for i in range(2)] == [78, 156]  # round(20000/257), round(40000/257)

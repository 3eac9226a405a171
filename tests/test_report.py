"""``imgcurate.show``, the rich result displays and ``imgcurate report``, on real bytes.

The curated output is made by the stage pipeline on the generated sample data with the tiny
random-weight model; its thresholds are quantiles of the scores, so both kept and dropped
samples exist. The report is also opened in a headless Chromium when one is installed.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import warnings
from html.parser import HTMLParser
from pathlib import Path

import dask
import dask.dataframe as dd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageStat

import imgcurate
from imgcurate.app.cli import main
from imgcurate.app.display import THUMBNAIL_PX, Gallery, pipeline_result_html, write_result_html
from imgcurate.app.report import write_report
from imgcurate.app.sample_data import make_sample_dataset

TRUNCATED_KEY = "000000007"  # the sample dataset's cut-short JPEG
DATA_URI = re.compile(r"^data:image/jpeg;base64,([A-Za-z0-9+/=]+)$")


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text, of an HTML document."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    return parser


def decode_uri(uri: str) -> Image.Image:
    match = DATA_URI.match(uri)
    assert match, uri[:60]
    image = Image.open(io.BytesIO(base64.b64decode(match.group(1))))
    assert image.format == "JPEG"
    return image.convert("RGB")


def images_in(html: str) -> list[Image.Image]:
    return [decode_uri(attrs["src"]) for tag, attrs in parse(html).tags if tag == "img"]


def assert_thumbnail_of(thumbnail: Image.Image, original: bytes) -> None:
    """``thumbnail`` is ``original`` scaled to fit the thumbnail box (same picture, same aspect ratio)."""
    source = Image.open(io.BytesIO(original)).convert("RGB")
    assert max(thumbnail.size) == min(THUMBNAIL_PX, max(source.size))
    assert abs(thumbnail.size[0] / thumbnail.size[1] - source.size[0] / source.size[1]) < 0.05 * source.size[0] / source.size[1] + 0.02
    reference = np.asarray(source.resize(thumbnail.size, Image.BILINEAR), dtype=np.float32)
    difference = np.abs(np.asarray(thumbnail, dtype=np.float32) - reference).mean()
    assert difference < 20, f"thumbnail differs from its image by {difference:.1f} levels on average"


# ---------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("report") / "sample-data"
    make_sample_dataset(str(directory), damaged=True)
    return directory


def _source_images(directory: Path) -> dict[str, bytes]:
    """Every sample's image bytes, read with Python's tarfile (not imgcurate)."""
    import tarfile

    images = {}
    for shard in sorted(directory.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                if ext in ("jpg", "png"):
                    images[key] = tar.extractfile(member).read()
    return images


@pytest.fixture(scope="module")
def source_images(sample_data) -> dict[str, bytes]:
    return _source_images(sample_data)


@pytest.fixture(scope="module")
def curated(sample_data):
    """(output directory, pipeline result, thresholds): a curation with kept, dropped and failed samples."""
    from imgcurate.models import TINY_MODEL, AestheticScorer, CLIPImageEmbedder, NSFWScorer
    from imgcurate.stages import (
        FilePartitioningStage, ImageAestheticFilterStage, ImageEmbeddingStage, ImageNSFWFilterStage, ImageReaderStage,
        ImageWriterStage, Pipeline,
    )

    df = imgcurate.read_webdataset(str(sample_data), with_images=False)
    with dask.config.set(scheduler="sync"):
        scores = imgcurate.embed(df, CLIPImageEmbedder(TINY_MODEL, pretrained=None), aesthetic=AestheticScorer(weights="random"),
                                 nsfw=NSFWScorer(weights="random"))[["aesthetic_score", "nsfw_score"]].compute().dropna()
    aesthetic = float(scores.aesthetic_score.quantile(0.3))
    nsfw = float(scores.nsfw_score.quantile(0.8))
    out = sample_data.parent / "curated"
    pipeline = Pipeline(name="report-test", stages=[
        FilePartitioningStage(str(sample_data)),
        ImageReaderStage(),
        ImageEmbeddingStage(TINY_MODEL, pretrained=None),
        ImageAestheticFilterStage(aesthetic, weights="random"),
        ImageNSFWFilterStage(nsfw, weights="random"),
        ImageWriterStage(str(out), images_per_tar=10, keep_dropped=True),
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random scores sit far below LAION's aesthetic scale
        result = pipeline.run(scheduler="threads")
    assert result.write.samples > 0 and result.write.counts["dropped"] > 0
    return out, result, {"aesthetic_score": aesthetic, "nsfw_score": nsfw}


@pytest.fixture(scope="module")
def report(curated, tmp_path_factory) -> tuple[Path, str]:
    out, _, _ = curated
    path = tmp_path_factory.mktemp("html") / "report.html"
    assert write_report(str(out), str(path)) == str(path)
    return path, path.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------
# show


def test_show_frame_without_image_bytes(sample_data, source_images):
    df = imgcurate.read_webdataset(str(sample_data), with_images=False)
    gallery = imgcurate.show(df, n=20)  # crosses from the first partition (16 rows) into the second
    assert isinstance(gallery, Gallery) and len(gallery) == 20
    assert [tile.key for tile in gallery.tiles] == [f"{i:09d}" for i in range(20)]
    html = gallery._repr_html_()
    thumbnails = images_in(html)
    shown = [tile for tile in gallery.tiles if tile.thumbnail]
    assert len(thumbnails) == len(shown) == 19
    for tile, thumbnail in zip(shown, thumbnails):
        assert_thumbnail_of(thumbnail, source_images[tile.key])
    [broken] = [tile for tile in gallery.tiles if not tile.thumbnail]
    assert broken.key == TRUNCATED_KEY and "truncated" in broken.problem
    assert "a purple noise pattern" in html  # the first caption
    assert TRUNCATED_KEY in repr(gallery) and "truncated" in repr(gallery)


def test_show_frame_with_image_bytes_and_real_photos(photo_dataset):
    directory, samples = photo_dataset
    df = imgcurate.read_webdataset(str(directory), with_images=True)
    gallery = imgcurate.show(df.compute(), n=6, columns=["caption", "width", "license"])
    thumbnails = images_in(gallery._repr_html_())
    assert len(thumbnails) == 6
    for sample, thumbnail in zip(samples, thumbnails):
        assert_thumbnail_of(thumbnail, sample["image"])
    first = gallery.tiles[0]
    assert [name for name, _ in first.fields] == ["caption", "width", "license"]
    assert dict(first.fields)["width"] == str(samples[0]["json"]["width"])
    with pytest.raises(ValueError, match="no column 'nope'"):
        imgcurate.show(df, n=2, columns=["nope"])


def test_show_escapes_text(tmp_path, photos):
    from conftest import write_tar

    caption = "<script>alert('x')</script> & \"quotes\""
    write_tar(tmp_path / "00000.tar", [("a.jpg", photos[0].read_bytes()), ("a.txt", caption.encode())])
    html = imgcurate.show(imgcurate.read_webdataset(str(tmp_path / "00000.tar")))._repr_html_()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in html


def test_show_failure_rows_give_their_reason(curated):
    out, result, _ = curated
    from imgcurate.models import TINY_MODEL, CLIPImageEmbedder

    source = result.manifest["inputs"][0]
    with dask.config.set(scheduler="sync"):
        embedded = imgcurate.embed(imgcurate.read_webdataset(source, with_images=False), CLIPImageEmbedder(TINY_MODEL, pretrained=None))
        gallery = imgcurate.show(embedded, n=10)
    broken = [tile for tile in gallery.tiles if tile.problem]
    assert [tile.key for tile in broken] == [TRUNCATED_KEY]
    assert broken[0].problem.startswith("decode_error: ")
    assert "decode_error" in gallery._repr_html_()


def test_show_written_output_directory_and_metadata_frame(curated, source_images):
    out, result, _ = curated
    keys = [key for shard in sorted(out.glob("[0-9]*.parquet")) for key in pq.read_table(shard, columns=["key"]).column("key").to_pylist()]
    first = keys[:12]  # two shards' worth: images_per_tar is 10
    from_directory = imgcurate.show(str(out), n=12)
    assert [tile.key for tile in from_directory.tiles] == first
    assert all(tile.thumbnail for tile in from_directory.tiles)  # failures are never written
    for tile in from_directory.tiles:
        assert_thumbnail_of(decode_uri(tile.thumbnail), source_images[tile.key])
        assert {name for name, _ in tile.fields} == {"caption", "aesthetic_score", "nsfw_score"}
    # the result object and a frame of the written metadata (no offsets: found in the source shards) agree
    assert [t.thumbnail for t in imgcurate.show(result, n=12).tiles] == [t.thumbnail for t in from_directory.tiles]
    from_frame = imgcurate.show(dd.read_parquet(str(out)), n=12)
    assert [t.thumbnail for t in from_frame.tiles] == [t.thumbnail for t in from_directory.tiles]
    dropped = imgcurate.show(str(out / "_dropped"), n=50)
    assert len(dropped) == result.write.counts["dropped"]
    assert {dict(tile.fields)["dropped_by"] for tile in dropped.tiles} <= {"aesthetic", "nsfw"}


def test_result_displays(curated):
    _, result, _ = curated
    counts = result.write.counts
    text = repr(result)
    assert text.startswith("PipelineResult('report-test', WriteResult(")
    assert f"dropped={counts['dropped']} (" in text and "failed=1 (decode_error 1)" in text
    assert "aesthetic" in text.splitlines()[-3]  # the stage table follows
    html = pipeline_result_html(result)
    assert "RANDOM WEIGHTS" in html
    tags = parse(html)
    cells = [text.strip() for text in tags.text if text.strip()]
    for stage in result.stage_counts:
        assert stage["stage"] in cells
    assert str(counts["read"]) in cells and "decode_error 1" in cells
    write_html = write_result_html(result.write)
    assert f"<b>{result.write.samples}</b> samples" in write_html
    assert "RANDOM" not in write_html  # the writer knows nothing of models


# ---------------------------------------------------------------------------------------
# report


def _svg_totals(html: str) -> list[int]:
    """The sum of the bar counts of each chart, in order."""
    return [sum(int(n) for n in re.findall(r"<title>(\d+)</title>", svg)) for svg in re.findall(r"<svg.*?</svg>", html, re.S)]


def test_report_contents(curated, report):
    out, result, thresholds = curated
    path, html = report
    manifest = json.loads((out / "_manifest.json").read_text())
    counts = manifest["counts"]
    tags = parse(html)

    # self-contained: every image inline, nothing fetched from anywhere
    assert not [attrs for tag, attrs in tags.tags if tag in ("link", "iframe", "object", "embed")]
    assert all(not attrs.get("src", "data:").startswith(("http", "//", "file")) for _, attrs in tags.tags)
    assert "http://" not in html and "https://" not in html

    assert "RANDOM WEIGHTS — scores meaningless" in html
    # thumbnails: the first 24 kept and 24 dropped samples
    assert len(images_in(html)) == min(24, counts["written"]) + min(24, counts["dropped"])

    # both histograms hold every embedded sample, kept or dropped, and mark the run's thresholds
    embedded = counts["written"] + counts["dropped"]
    assert _svg_totals(html) == [embedded, embedded]
    for column, value in thresholds.items():
        assert f"threshold {value:g} (keep" in html
    scored = pa.concat_tables([pq.read_table(p, columns=["aesthetic_score"]) for p in sorted(out.glob("[0-9]*.parquet"))] +
                              [pq.read_table(p, columns=["aesthetic_score"]) for p in sorted((out / "_dropped").glob("[0-9]*.parquet"))])
    values = scored.column("aesthetic_score").to_numpy()
    assert f"{len(values)} samples; min {values.min():.4g}," in html and f"max {values.max():.4g};" in html

    cells = [text.strip() for text in tags.text if text.strip()]
    for row in manifest["stage_counts"]:
        assert row["stage"] in cells
    assert "decode_error" in cells and TRUNCATED_KEY in cells  # the failure list
    assert "imgcurate-tiny-vit" in cells
    assert tags.tags[-1][0] == "script"


def test_report_on_reshard_output(sample_data, tmp_path):
    out = tmp_path / "resharded"
    assert main(["reshard", str(sample_data), "--output", str(out), "--images-per-tar", "20", "--scheduler", "threads",
                 "--no-progress"]) == 0
    path = tmp_path / "report.html"
    assert main(["report", str(out), "--output", str(path), "--thumbnails", "10"]) == 0
    html = path.read_text(encoding="utf-8")
    assert "No scores" in html and "<svg" not in html
    assert "RANDOM WEIGHTS" not in html
    assert len(images_in(html)) == 9  # reshard copies the truncated JPEG as it is: shown with its problem
    assert "cannot decode" in html


def test_report_refuses_a_directory_imgcurate_did_not_write(sample_data, tmp_path, capsys):
    assert main(["report", str(sample_data), "--output", str(tmp_path / "r.html")]) == 2
    assert "not an output directory written by imgcurate" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r.html")]) == 2
    assert "nowhere': no such directory" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_a_headless_browser(report, tmp_path):
    path, html = report
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--virtual-time-budget=5000"]
    url = path.resolve().as_uri()
    dom = subprocess.run([CHROMIUM, *flags, f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stdout[:500]
    images = len(images_in(html))
    assert f'data-images-decoded="{images}/{images}"' in body.group(0)
    assert 'data-images-loaded="all"' in body.group(0)

    screenshot = tmp_path / "report.png"
    shot = subprocess.run([CHROMIUM, *flags, f"--user-data-dir={tmp_path / 'profile-shot'}", f"--screenshot={screenshot}",
                           "--window-size=1200,2000", url], capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1200, 2000)
    assert len(image.getcolors(maxcolors=1 << 20) or ()) > 200
    assert max(ImageStat.Stat(image.convert("L")).stddev) > 20
    # the banner is drawn, in its red, near the top
    top = np.asarray(image.crop((0, 0, 1200, 500)), dtype=np.int16)
    red = (np.abs(top - np.array([0xC0, 0x39, 0x2B])).sum(axis=2) < 30).sum()
    assert red > 20_000, f"only {red} banner-red pixels at the top"


def test_results_render_as_html_in_ipython(curated):
    """WriteResult and PipelineResult carry no HTML themselves; imgcurate registers their renderers with IPython."""
    from IPython.core.interactiveshell import InteractiveShell

    from imgcurate.app.notebook import register_html_formatters

    _, result, _ = curated
    shell = InteractiveShell.instance()
    try:
        assert register_html_formatters(shell)
        formatter = shell.display_formatter.formatters["text/html"]
        assert formatter(result) == pipeline_result_html(result)
        assert formatter(result.write) == write_result_html(result.write)
    finally:
        InteractiveShell.clear_instance()

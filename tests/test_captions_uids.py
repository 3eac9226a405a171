"""uid subsets in DataComp's .npy format: saved byte for byte as DataComp's baselines save them, selected as its
resharder selects them, bad uids reported, wrong files refused by name; the stage, curate, export and subset."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import imgcurate
from captions_data import build_pairs_dataset, uid_of
from imgcurate.common import columns as C
from imgcurate.ops.uids import UidSubsetError, merged_buckets, parse_uids, sort_uids


def datacomp_subset_bytes(uids: list[str]) -> bytes:
    """A subset file built by DataComp's baseline rules (baselines/apply_filter.py): each uid as
    (int(uid[:16], 16), int(uid[16:32], 16)) in an np.dtype("u8,u8") array, sorted in place, np.save'd."""
    pairs = np.array([(int(uid[:16], 16), int(uid[16:32], 16)) for uid in uids], np.dtype("u8,u8"))
    pairs.sort()
    out = io.BytesIO()
    np.save(out, pairs)
    return out.getvalue()


@pytest.fixture
def pairs(tmp_path, photos):
    directory = tmp_path / "pairs"
    return directory, build_pairs_dataset(directory, photos)


def test_parsed_uids_are_datacomps_halves_and_bad_ones_are_named():
    rng = np.random.default_rng(1)
    uids = [f"{rng.integers(0, 2**63):016x}{rng.integers(0, 2**63):016X}" for _ in range(200)] + ["f" * 32, "0" * 32]
    parsed = parse_uids(pd.array(uids + [None, "abc", "g" * 32, "0" * 33, " " + "0" * 31], dtype="string[pyarrow]").__arrow_array__())
    assert parsed.problems[-5:] == ["no_uid", "bad_uid", "bad_uid", "bad_uid", "bad_uid"]
    assert parsed.valid[:-5].all()
    expected = [(int(u[:16], 16), int(u[16:32], 16)) for u in uids]
    assert parsed.pairs[:-5].tolist() == expected


def test_saved_uids_are_byte_for_byte_what_datacomps_baselines_save(tmp_path, pairs):
    directory, samples = pairs
    df = imgcurate.read_webdataset(str(directory), with_images=False)
    df = df.repartition(npartitions=5)  # partitions other than the shards: the file must not depend on them
    path = tmp_path / "subset.npy"
    saved = imgcurate.save_uids(df, str(path))
    good = [s["uid"] for s in samples if s["uid"] is not None and len(s["uid"]) == 32 and s["uid"] != "not-a-uid-0123456789abcdef012345"]
    assert path.read_bytes() == datacomp_subset_bytes(good)
    assert (saved.uids, saved.bad_uid, saved.no_uid) == (len(good), 1, 1)
    assert np.load(path).dtype == np.dtype("u8,u8")  # what DataComp's resharder asserts


def test_the_bucketed_merge_of_sorted_runs_is_the_sorted_union():
    rng = np.random.default_rng(2)
    pairs = np.zeros(5000, dtype=np.dtype("u8,u8"))
    pairs["f0"] = rng.integers(0, 50, 5000)  # many equal upper halves, and repeated uids
    pairs["f1"] = rng.integers(0, 2**63, 5000)
    pairs[100:200] = pairs[0]
    runs = [sort_uids(pairs[i::13]) for i in range(13)]
    buckets = list(merged_buckets(runs, bucket_rows=300))
    assert len(buckets) > 5
    reference = pairs.copy()
    reference.sort()
    assert np.concatenate(buckets).tobytes() == reference.tobytes()


def test_select_uids_keeps_exactly_the_listed_samples_and_lists_the_misses(tmp_path, pairs):
    directory, samples = pairs
    chosen = [uid_of(n) for n in (0, 3, 9, 10, 22, 29)]
    absent = [uid_of(1000), uid_of(1001)]
    path = tmp_path / "subset.npy"
    path.write_bytes(datacomp_subset_bytes(chosen + absent + [uid_of(3)]))  # uid 3 listed twice
    df = imgcurate.select_uids(imgcurate.read_webdataset(str(directory), with_images=False), str(path))
    frame = df.compute()
    kept = imgcurate.ok_rows(df).compute()
    assert sorted(kept[C.UID]) == sorted(chosen)
    assert set(frame.loc[frame[C.ERROR].isin(["bad_uid", "no_uid"]), C.KEY]) == {"000006", "000007"}
    misses = imgcurate.uid_subset_misses(df, str(path))
    assert (misses.listed, misses.duplicates, misses.found, misses.missing) == (9, 1, 6, 2)
    assert sorted(misses.missing_uids) == sorted(absent)


def test_a_subset_file_of_another_dtype_is_refused_naming_the_expected_one(tmp_path, pairs):
    directory, _ = pairs
    df = imgcurate.read_webdataset(str(directory), with_images=False)
    for name, array in (("ints.npy", np.arange(4, dtype=np.int64)), ("u4.npy", np.zeros(3, np.dtype("u4,u4"))),
                        ("strings.npy", np.array([uid_of(0)]))):
        np.save(tmp_path / name, array)
        with pytest.raises(UidSubsetError, match=r"expected np\.dtype\('u8,u8'\)"):
            imgcurate.select_uids(df, str(tmp_path / name))
    (tmp_path / "odd.bin").write_bytes(b"x" * 17)
    with pytest.raises(UidSubsetError, match="u8,u8"):
        imgcurate.select_uids(df, str(tmp_path / "odd.bin"))
    # the other byte order and DataComp's resharder's bare pairs (no .npy header) are read
    big = np.array([(int(uid_of(4)[:16], 16), int(uid_of(4)[16:], 16))], np.dtype(">u8,>u8"))
    np.save(tmp_path / "big.npy", big)
    (tmp_path / "bare.bin").write_bytes(big.astype(np.dtype("u8,u8")).tobytes())
    for name in ("big.npy", "bare.bin"):
        kept = imgcurate.ok_rows(imgcurate.select_uids(df, str(tmp_path / name))).compute()
        assert list(kept[C.UID]) == [uid_of(4)]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgcurate", *args], capture_output=True, text=True, timeout=600)


def test_subset_command_reshards_the_listed_samples_and_records_the_misses(tmp_path, pairs):
    directory, _ = pairs
    chosen = [uid_of(n) for n in range(0, 30, 3) if n != 6]  # sample 6 has a malformed uid
    path = tmp_path / "subset.npy"
    path.write_bytes(datacomp_subset_bytes(chosen + [uid_of(5000)]))
    out = tmp_path / "out"
    done = run_cli("subset", str(directory), "--uids", str(path), "--output", str(out), "--images-per-tar", "4",
                   "--scheduler", "threads", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "1 of the 10 uids" in done.stdout
    written = dd.read_parquet(str(out)).compute()
    assert sorted(written[C.UID]) == sorted(chosen)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["uid_subset"]["missing_uids"] == [uid_of(5000)]
    assert manifest["counts"]["dropped_by_stage"]["select_uids"] == 30 - 2 - len(chosen)  # two have no valid uid
    assert manifest["counts"]["failed_by_reason"] == {"bad_uid": 1, "no_uid": 1}
    # a wrong file fails before any shard is read, naming the dtype
    np.save(tmp_path / "wrong.npy", np.arange(3))
    failed = run_cli("subset", str(directory), "--uids", str(tmp_path / "wrong.npy"), "-o", str(tmp_path / "o2"),
                     "--scheduler", "threads")
    assert failed.returncode == 2 and "np.dtype('u8,u8')" in failed.stderr and not (tmp_path / "o2").exists()


def test_export_save_uids_writes_the_uids_of_the_written_samples(tmp_path, pairs):
    directory, samples = pairs
    out, path = tmp_path / "out", tmp_path / "kept.npy"
    # samples 6 and 7 (a malformed uid, none) pass the predicate whatever the photos' sizes
    done = run_cli("export", str(directory), "--where", "original_width > 500 OR key IN ('000006', '000007')",
                   "--save-uids", str(path), "-o", str(out), "--scheduler", "threads", "--no-progress")
    assert done.returncode == 0, done.stderr
    written = dd.read_parquet(str(out)).compute()
    assert path.read_bytes() == datacomp_subset_bytes(list(written[C.UID]))
    wide = {s["key"] for s in samples if s["json"]["original_width"] > 500}
    assert 0 < len(wide - {"000006", "000007"}) < len(samples) - 2  # the predicate drops some samples, keeps others
    assert sorted(written[C.KEY]) == sorted(wide - {"000006", "000007"})
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["counts"]["failed_by_reason"] == {"bad_uid": 1, "no_uid": 1}  # reported; the run went on


def test_the_readmes_datacomp_recipe_runs_as_written_on_the_sample_data(tmp_path, monkeypatch):
    """The README's Python block of the recipe, taken from README.md, on the sample data (which has
    DataComp-style uids), with the tiny model's random weights in place of OpenAI's; then the
    subset command on the file it saved."""
    import re
    from pathlib import Path

    from imgcurate.app.cli import main
    from imgcurate.app.sample_data import make_sample_dataset

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("The DataComp recipe end to end"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    trained = 'CLIPModel("ViT-L-14", pretrained="openai")'
    assert trained in code and '"pool/"' in code and '"clip_l14_top30.npy"' in code
    monkeypatch.chdir(tmp_path)
    make_sample_dataset("pool")
    exec(compile(code.replace(trained, 'CLIPModel("imgcurate-tiny-vit", pretrained="random", device="cpu")'),
                 "README.md (DataComp recipe)", "exec"), {})

    scores = imgcurate.read_webdataset("pool").pipe(imgcurate.clip_score, imgcurate.models.CLIPModel(
        "imgcurate-tiny-vit", pretrained="random", device="cpu")).compute()
    threshold = np.sort(scores[C.CLIP_SCORE].to_numpy())[::-1][int(len(scores) * 0.3)]  # DataComp's get_threshold
    expected = sorted(scores.loc[scores[C.CLIP_SCORE] >= threshold, C.UID])
    assert len(expected) == 15  # 30 % of the 48 samples, no ties
    assert Path("clip_l14_top30.npy").read_bytes() == datacomp_subset_bytes(expected)
    curated = imgcurate.sql("SELECT uid FROM samples ORDER BY uid", "curated").uid.tolist()
    assert curated == expected
    manifest = json.loads(Path("curated/_manifest.json").read_text())
    assert manifest["clip_score"]["threshold"] == pytest.approx(float(threshold))

    assert main(["subset", "pool", "--uids", "clip_l14_top30.npy", "--output", "subset", "--scheduler", "threads",
                 "--no-progress"]) == 0
    assert imgcurate.sql("SELECT uid FROM samples ORDER BY uid", "subset").uid.tolist() == expected

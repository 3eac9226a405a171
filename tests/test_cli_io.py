"""The reshard, export, inspect and demo commands, run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import webdataset as wds

from imgcurate.app.cli import main


def keys_in(directory: Path) -> list[str]:
    shards = sorted(str(p) for p in Path(directory).glob("*.tar"))
    return [s["__key__"] for s in wds.WebDataset(shards, shardshuffle=False)]


def test_reshard_and_export(tmp_path, photo_dataset, capsys):
    directory, samples = photo_dataset
    assert main(["reshard", str(directory), "-o", str(tmp_path / "r"), "--images-per-tar", "8", "--scheduler", "threads"]) == 0
    assert keys_in(tmp_path / "r") == [s["key"] for s in samples]
    assert "wrote 30 samples in 4 shards" in capsys.readouterr().out

    code = main(["export", str(directory), "-o", str(tmp_path / "e"), "--where", "width > height AND license = 'LGPL'",
                 "--images-per-tar", "3", "--scheduler", "threads", "--no-progress"])
    assert code == 0
    expected = [s["key"] for s in samples if s["json"]["landscape"] and int(s["key"]) % 2]
    assert keys_in(tmp_path / "e") == expected
    manifest = json.loads((tmp_path / "e" / "_manifest.json").read_text())
    assert manifest["counts"]["dropped_by_stage"] == {"where": 30 - len(expected)}


def test_errors_are_one_line_and_exit_non_zero(tmp_path, photo_dataset, capsys):
    directory, _ = photo_dataset
    assert main(["export", str(directory), "-o", str(tmp_path / "e"), "--where", "no_such_column > 1", "--scheduler", "threads"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgcurate export: error:") and "no_such_column" in err
    assert main(["reshard", str(tmp_path / "missing"), "-o", str(tmp_path / "x"), "--scheduler", "threads"]) == 2
    assert "does not exist" in capsys.readouterr().err
    main(["reshard", str(directory), "-o", str(tmp_path / "r"), "--scheduler", "threads", "--no-progress"])
    assert main(["reshard", str(directory), "-o", str(tmp_path / "r"), "--scheduler", "threads"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_inspect(tmp_path, photo_dataset, capsys):
    directory, _ = photo_dataset
    assert main(["inspect", str(directory), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shards"] == 3 and report["samples"] == 30
    assert report["bytes"] == sum(os.path.getsize(directory / f"{i:05d}.tar") for i in range(3))
    assert report["columns"]["width"] == "int64[pyarrow]"
    assert main(["inspect", str(directory)]) == 0
    assert "3 shards, 30 samples" in capsys.readouterr().out


def test_console_script_help_for_every_command():
    script = Path(sys.executable).parent / "imgcurate"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    commands = [c for c in ("reshard", "export", "inspect", "sample-data", "demo") if c in out]
    assert len(commands) == 5
    for command in commands:
        result = subprocess.run([str(script), command, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: imgcurate " + command in result.stdout


def test_every_command_that_writes_exits_1_when_no_input_shard_could_be_read(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("00000.tar", "00001.tar"):
        (inputs / name).write_bytes(b"these bytes are not a tar archive " * 40)
    commands = {
        "reshard": ["reshard", str(inputs)],
        "dedup": ["dedup", str(inputs), "--method", "exact"],
        "curate": ["curate", str(inputs), "--model", "imgcurate-tiny-vit", "--pretrained", "random",
                   "--aesthetic-weights", "random", "--nsfw-weights", "random"],
    }
    for name, argv in commands.items():
        code = main([*argv, "-o", str(tmp_path / name), "--scheduler", "threads", "--no-progress"])
        captured = capsys.readouterr()
        assert code == 1, (name, captured.out, captured.err)
        assert "no input shard could be read (2 rejected)" in captured.err, name
        manifest = json.loads((tmp_path / name / "_manifest.json").read_text())
        assert manifest["counts"]["rejected_shards_by_reason"] == {"not_a_tar": 2}, name


def test_every_command_names_a_missing_input_in_one_line(tmp_path, capsys):
    missing = str(tmp_path / "nowhere")
    for argv in (["reshard", missing, "-o", str(tmp_path / "o1")], ["dedup", missing, "-o", str(tmp_path / "o2"), "--method", "exact"],
                 ["curate", missing, "-o", str(tmp_path / "o3")], ["export", missing, "-o", str(tmp_path / "o4"), "--where", "width > 1"],
                 ["inspect", missing], ["query", missing, "SELECT 1"]):
        assert main([*argv, "--scheduler", "threads"] if argv[0] != "query" else argv) == 2, argv
        err = capsys.readouterr().err
        assert err == f"imgcurate {argv[0]}: error: input {missing!r} does not exist\n", argv


def test_warnings_are_one_line_on_the_command_line(tmp_path):
    """A warning reaches the terminal as one line (no file path and source line), and in full with --debug."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from conftest import write_tar

    write_tar(tmp_path / "00000.tar", [("a.jpg", b"x"), ("a.json", b'{"width": 100}')])
    pq.write_table(pa.table({"key": ["a"], "width": [300]}), tmp_path / "00000.parquet")
    script = Path(sys.executable).parent / "imgcurate"
    result = subprocess.run([str(script), "inspect", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["warning: field 'width' differs between samples' .json and their sidecar Parquet "
                                          "row: the .json value is kept (the sidecar only fills values the .json lacks)"]
    debug = subprocess.run([str(script), "--debug", "inspect", str(tmp_path)], capture_output=True, text=True)
    assert "schema.py" in debug.stderr and "UserWarning: field 'width' differs" in debug.stderr

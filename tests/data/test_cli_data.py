"""`lungsearch data ...` commands (in-process, through the real argument parser)."""

from __future__ import annotations

import json

from lungsearch.cli import main


def test_data_phantoms_and_inspect(tmp_path, capsys):
    out = tmp_path / "ct"
    assert (
        main(
            [
                "data",
                "phantoms",
                "--kind",
                "ct",
                "--n",
                "2",
                "--out",
                str(out),
                "--size",
                "48",
                "--slices",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["synthetic"] is True and (out / "manifest.jsonl").is_file()
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 4
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 10)
    assert main(["data", "inspect", str(files[0]), str(bad)]) == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert lines[0]["modality"] == "ct" and lines[0]["hu"] is True
    assert lines[1]["code"] == "malformed_dicom"


def test_data_sources(capsys):
    assert main(["data", "sources"]) == 0
    names = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert {"phantom", "nih", "ild-ct", "covid19-radiography"} <= names

"""Data discovery: ``shared/data/<name>`` is found the same way for an editable and a
non-editable install, and a missing dataset's message speaks the caller's language.

A fake layout under ``tmp_path``: ``work/repo`` (the checkout, the current directory or a
sub-directory of it), ``work/shared/data/mnist`` (the four IDX file names; discovery only
checks that they exist) and the package somewhere else (``site/sgjax/infra``, as in a
``site-packages`` of a non-editable install).
"""

from __future__ import annotations

import pytest

from sgjax.infra import data


@pytest.fixture
def layout(tmp_path, monkeypatch):
    monkeypatch.delenv("SGJAX_DATA_DIR", raising=False)
    (tmp_path / "work" / "repo" / "notebooks").mkdir(parents=True)
    mnist = tmp_path / "work" / "shared" / "data" / "mnist"
    mnist.mkdir(parents=True)
    for f in data.IDX_FILES.values():
        (mnist / f).write_bytes(b"")
    site = tmp_path / "site" / "sgjax" / "infra"
    site.mkdir(parents=True)
    return tmp_path, mnist, site


@pytest.mark.parametrize("where", ["repo", "repo/notebooks"])
def test_a_non_editable_install_finds_the_checkouts_shared(layout, monkeypatch, where):
    tmp, mnist, site = layout
    monkeypatch.setattr(data, "_PACKAGE_DIR", site)  # the package is not in the checkout
    monkeypatch.chdir(tmp / "work" / where)
    assert data.find_idx_dir("mnist") == mnist.resolve()


def test_an_editable_install_finds_it_from_anywhere(layout, monkeypatch):
    tmp, mnist, _ = layout
    pkg = tmp / "work" / "repo" / "sgjax" / "infra"
    pkg.mkdir(parents=True)
    monkeypatch.setattr(data, "_PACKAGE_DIR", pkg)
    monkeypatch.chdir(tmp / "site")  # outside the checkout
    assert data.find_idx_dir("mnist") == mnist.resolve()


def test_the_message_speaks_the_callers_language(tmp_path, monkeypatch):
    monkeypatch.delenv("SGJAX_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError) as info:
        data.find_idx_dir("mnist", tmp_path / "none")
    err = info.value
    assert "`data_dir=`" in str(err) and "--data-dir" not in str(err)
    assert "--data-dir DIR" in err.cli_message() and "data_dir" not in err.cli_message()
    assert str(tmp_path / "none") in err.cli_message()


def test_the_command_line_says_data_dir_flag(tmp_path, monkeypatch, capsys):
    from sgjax.apps import cli

    monkeypatch.delenv("SGJAX_DATA_DIR", raising=False)
    rc = cli.main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "not found via --data-dir" in err and "--data-dir DIR" in err
    assert "data_dir" not in err

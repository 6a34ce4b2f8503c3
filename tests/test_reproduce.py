"""Every experiment of ``sgjax reproduce`` at smoke scale: PNGs, results.json, report.md."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from sgjax.apps import cli
from sgjax.apps.experiments import common as C
from sgjax.apps.experiments import deep, depth, dni, grid


def _check_outputs(out: Path, pngs: list[str], keys: set[str]) -> dict:
    for name in pngs:
        f = out / name
        assert f.exists(), f"{name} not written"
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f.stat().st_size < 400_000  # small enough to commit
    res = json.loads((out / "results.json").read_text())
    assert keys <= set(res), f"results.json lacks {keys - set(res)}"
    report = (out / "report.md").read_text()
    for name in pngs:
        assert f"]({name})" in report, f"report.md does not show {name}"
    assert "## Settings" in report
    return res


def test_fig2_smoke(tmp_path):
    ctx = C.Context(out=tmp_path / "fig2", scale="smoke")
    res = grid.run(ctx)
    out = _check_outputs(
        ctx.out, ["fig2_noisy_mse.png", "fig2_spearman.png"], {"settings", "summary", "spearman"}
    )
    row = out["summary"]["per_run"]["noisy/mse"]
    for setup in ("single", "no_label", "label_only"):
        assert -1.0 <= row[f"{setup}_ref"] <= 1.0
    assert {"SG1", "SG2", "SG3"} == {
        f"SG{b}" for b in out["spearman"]["noisy/mse"]["every"]["boundaries"]
    }
    # the ρ in the summary is the one recomputed from the stored snapshot
    recs = res["runs"]["noisy/mse"]["single"]["snapshots"]
    assert row["single_final"] == pytest.approx(recs[-1]["spearman"][0])
    assert "Spearman" in (ctx.out / "report.md").read_text()


@pytest.fixture(scope="module")
def deep_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("deep_cache")


@pytest.mark.mnist
def test_deep_networks_resume_after_an_interruption(tmp_path, mnist_dir):
    # an interrupted run keeps every network trained so far: only the missing one retrains
    ctx = C.Context(
        out=tmp_path / "o", scale="smoke", data_dir=str(mnist_dir), cache_dir=tmp_path / "c"
    )
    first = deep.trained_networks(ctx)
    files = {p.name: p for p in (tmp_path / "c").glob("*.pkl")}
    whole = [n for n in files if not n.endswith(tuple(f"-{m}.pkl" for m in deep.METHODS))]
    assert len(whole) == 1 and len(files) == 1 + len(deep.METHODS)
    files[whole[0]].unlink()  # as if killed while training the last network
    last = deep.METHODS[-1]
    (lost,) = [p for n, p in files.items() if n.endswith(f"-{last}.pkl")]
    lost.unlink()
    kept = {n: p.stat().st_mtime_ns for n, p in files.items() if p.exists()}
    again = deep.trained_networks(ctx)
    assert {n: files[n].stat().st_mtime_ns for n in kept} == kept  # not retrained
    assert lost.exists() and files[whole[0]].exists()
    for m in deep.METHODS:  # same seed, same networks
        for a, b in zip(
            jax.tree.leaves(first["methods"][m]["params"]),
            jax.tree.leaves(again["methods"][m]["params"]),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)


@pytest.mark.mnist
def test_fig3_fig5_fig8_smoke_share_networks(tmp_path, mnist_dir, deep_cache):
    def ctx(name):
        return C.Context(
            out=tmp_path / name, scale="smoke", data_dir=str(mnist_dir), cache_dir=deep_cache
        )

    r3 = deep.run_fig3(ctx("fig3"))
    cached = sorted(deep_cache.glob("*.pkl"))
    assert len(cached) == 1 + len(deep.METHODS)  # trained once (each net, and the set) ...
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    r5 = deep.run_fig5(ctx("fig5"))
    r8 = deep.run_fig8(ctx("fig8"))
    assert {p: p.stat().st_mtime_ns for p in cached} == stamps  # ... reused by fig5 and fig8
    L = deep.SETTINGS["smoke"]["hidden"]
    _check_outputs(
        tmp_path / "fig3",
        ["fig3_rdms.png", "fig3_distance.png", "sg_cosine.png"],
        {"settings", "methods", "claims", "sg_boundary", "training"},
    )
    for m in deep.METHODS:
        dist = r3["methods"][m]["distance_to_last"]
        assert len(dist) == L and dist[-1] == 0.0
        assert r3["methods"][m]["cosine"].shape[1] == L
    # a fresh SG at step 0 sends nothing: cosine 0; backprop is exact: cosine 1
    assert r3["methods"]["sg_all"]["cosine_steps"][0] == 0
    assert r3["methods"]["sg_all"]["cosine"][0].tolist() == [0.0] * L
    sg_b = r3["sg_boundary"]
    assert r3["methods"]["sg"]["cosine"][0][sg_b - 1] == 0.0
    assert r3["methods"]["backprop"]["cosine"][-1] == pytest.approx([1.0] * L, abs=1e-4)
    _check_outputs(tmp_path / "fig5", ["fig5_weight_norms.png"], {"methods", "claims"})
    for m in deep.METHODS:
        assert sum(r5["methods"][m]["norms"]) == pytest.approx(1.0)
    _check_outputs(tmp_path / "fig8", ["fig8_probes.png"], {"methods", "claims"})
    for m in deep.METHODS:
        acc = r8["methods"][m]["classifier_train_accuracy"]
        assert len(acc) == L and all(0.0 <= a <= 1.0 for a in acc)
        held = r8["methods"][m]["classifier_heldout_accuracy"]
        assert len(held) == L and all(0.0 <= a <= 1.0 for a in held)
        assert all(v >= 0 for v in r8["methods"][m]["regressor_mse"])


@pytest.mark.mnist
def test_fig4_smoke(tmp_path, mnist_dir):
    ctx = C.Context(out=tmp_path / "fig4", scale="smoke", data_dir=str(mnist_dir))
    res = depth.run(ctx)
    _check_outputs(ctx.out, ["fig4_depth.png"], {"settings", "curves", "claims", "check_steps"})
    cfg = depth.SETTINGS["smoke"]
    assert len(res["curves"]) == len(cfg["depths"]) * len(cfg["activations"]) * 2
    for c in res["curves"].values():
        assert c["steps"][-1] == cfg["steps"] and set(res["check_steps"]) <= set(c["steps"])


@pytest.mark.mnist
def test_dni_mnist_smoke(tmp_path, mnist_dir):
    ctx = C.Context(out=tmp_path / "dni", scale="smoke", data_dir=str(mnist_dir))
    res = dni.run(ctx)
    _check_outputs(ctx.out, ["dni_mnist.png"], {"settings", "runs", "claims"})
    for n in dni.SETTINGS["smoke"]["layers"]:
        errs = {m: res["runs"][f"{n}/{m}"]["test_error"] for m in dni.METHODS}
        assert all(0.0 <= e <= 1.0 for e in errs.values())


def test_no_bprop_trains_only_the_last_layer():
    import jax
    import numpy as np
    import optax

    from sgjax import nets, train

    net = nets.mlp([6, 5, 5, 3], "relu", norm="batch")
    x = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
    y = (np.arange(32) % 3).astype(np.int32)
    key = jax.random.key(0)
    opt = C.adam(1e-2)
    rule = dni._rule("no_bprop", dni.SETTINGS["smoke"])
    init = train.init(key, net, rule, opt, optax.set_to_zero())
    state, _ = C.train_with_snapshots(
        net, rule, "xent", opt, x, y, steps=5, batch_size=8, key=key,
        sg_optimizer=optax.set_to_zero(),
    )  # fmt: skip
    for k in range(2):
        for name in init.params[k]:
            np.testing.assert_array_equal(state.params[k][name], init.params[k][name])
    assert not np.allclose(state.params[2]["W"], init.params[2]["W"])


@pytest.mark.mnist
def test_cli_reproduce_uses_shared_cache(tmp_path, mnist_dir, deep_cache, capsys):
    # fig5 after the shared-network test: the cache makes this cheap.
    rc = cli.main(
        ["reproduce", "fig5", "--scale", "smoke", "--out", str(tmp_path / "f5"),
         "--data-dir", str(mnist_dir), "--cache-dir", str(deep_cache), "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    assert "fig5:" in capsys.readouterr().out
    assert (tmp_path / "f5" / "report.md").exists()


def test_bad_arguments():
    with pytest.raises(ValueError, match="`scale`"):
        C.Context(out=Path("x"), scale="huge")
    with pytest.raises(ValueError, match="`steps`"):
        C.Context(out=Path("x"), steps=0)
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "fig2", "--steps", "0"])
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "fig7"])


def test_missing_mnist_is_a_one_line_error(tmp_path, capsys):
    rc = cli.main(["reproduce", "fig4", "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path)])
    assert rc == 1
    assert "error" in capsys.readouterr().err

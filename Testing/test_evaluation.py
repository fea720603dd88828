"""Evaluation: MedicalNet features against the released network's fixture, FID/KID closed forms, MS-SSIM,
the real-statistics cache and the ``wdm evaluate`` command functions."""

from __future__ import annotations

import argparse
import json
import math
import os
import warnings
import zlib

import numpy as np
import pytest
import torch
from conftest import REFERENCE_DIR, load_reference

from wdmcore.cli import evaluate as eval_command
from wdmcore.errors import CheckpointError, ConfigError, InputShapeError
from wdmcore.evaluation import (
    FeatureStatistics,
    MedicalNetFeatureExtractor,
    MSSSIMSettings,
    NiftiReader,
    SmallSampleWarning,
    build_medicalnet_resnet50,
    evaluate,
    fid_from_features,
    frechet_distance,
    kernel_inception_distance,
    list_volumes,
    load_medicalnet_state_dict,
    ms_ssim,
    ms_ssim_diversity,
    real_statistics,
    select_pairs,
)

pytest.importorskip("monai")
nib = pytest.importorskip("nibabel")

FIXTURE = "medicalnet_resnet50_fixture.pt"
LAYOUT = "medicalnet_resnet50_fixture_weights_layout.json"


# ----------------------------------------------------------------------------------------------------
# Fixture weights: regenerated from the formula in the fixture's description (OFFICIAL_FACTS section 14)
# ----------------------------------------------------------------------------------------------------


def regenerate_fixture_weight(key: str, shape: list[int], dtype: str) -> torch.Tensor:
    """One state-dict entry of the fixture network; ``key`` is the bare key (without ``module.``)."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=getattr(torch, dtype))
    generator = torch.Generator(device="cpu").manual_seed(zlib.crc32(key.encode("utf-8")) & 0x7FFFFFFF)
    if key.endswith(".weight") and len(shape) >= 2:
        fan_in = math.prod(shape) // shape[0]
        return torch.randn(shape, generator=generator, dtype=torch.float32) * math.sqrt(2.0 / fan_in)
    if key.endswith(".weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    if key.endswith(".bias") or key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=generator)
    if key.endswith("running_var"):
        return 1.0 + 0.5 * torch.rand(shape, generator=generator)
    raise AssertionError(f"no formula for {key}")


def regenerate_fixture_state_dict() -> dict[str, torch.Tensor]:
    """``{'module.' + key: tensor}`` in the real file's entry order."""
    layout = json.loads((REFERENCE_DIR / LAYOUT).read_text(encoding="utf-8"))
    assert layout["container"] == {
        "top_level_key": "state_dict",
        "key_prefix": "module.",
    }
    state = {}
    for entry in layout["entries"]:
        bare = entry["key"][len("module.") :]
        state[entry["key"]] = regenerate_fixture_weight(bare, entry["shape"], entry["dtype"])
    assert len(state) == layout["num_entries"] == 318
    return state


@pytest.fixture(scope="module")
def reference(reference_dir):
    return load_reference(FIXTURE)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, reference_dir):
    """A ``resnet_50_23dataset.pth``-shaped file holding the regenerated fixture weights."""
    path = tmp_path_factory.mktemp("medicalnet") / "resnet_50_23dataset.pth"
    torch.save({"state_dict": regenerate_fixture_state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def extractor(weights_file):
    return MedicalNetFeatureExtractor(weights_file, device="cpu")


# ----------------------------------------------------------------------------------------------------
# Feature network
# ----------------------------------------------------------------------------------------------------


def test_regenerated_weights_match_fixture_checksums(reference, weights_file):
    state = load_medicalnet_state_dict(weights_file)
    assert not any(k.startswith("module.") for k in state)
    check = reference["weight_check"]
    assert len(reference["weight_check_keys"]) == check.shape[0] == 265
    for row, key in enumerate(reference["weight_check_keys"]):
        t = state[key].double().flatten()
        got = torch.stack([t.sum(), t.abs().sum(), t[0], t[-1]])
        torch.testing.assert_close(got, check[row], rtol=1e-9, atol=1e-9, msg=key)


def test_features_match_released_network_fp32(reference, extractor):
    scale = reference["features_x1"].abs().max().item()
    # One volume per forward pass, as the released FID does (the fixture ran x1 as a batch of 2).
    for i in range(2):
        ours = extractor.features(reference["x1"][i, 0])
        assert ours.shape == (2048,)
        np.testing.assert_allclose(
            ours,
            reference["features_x1"][i].double().numpy(),
            rtol=0,
            atol=1e-4 * scale,
        )
    batch = extractor.features_batch(reference["x1"])
    torch.testing.assert_close(batch, reference["features_x1"], rtol=0, atol=1e-4 * scale)
    # Not a cube: 64 x 64 x 48.
    ours = extractor.features(reference["x2"][0, 0].numpy())
    scale2 = reference["features_x2"].abs().max().item()
    np.testing.assert_allclose(ours, reference["features_x2"][0].double().numpy(), rtol=0, atol=1e-4 * scale2)
    assert (ours == 0).sum() == 5  # five channels are zero everywhere after the final ReLU


def test_features_match_released_network_float64(reference, weights_file):
    ex64 = MedicalNetFeatureExtractor(weights_file, dtype=torch.float64)
    torch.testing.assert_close(
        ex64.features_batch(reference["x1"]), reference["features_x1_float64"], rtol=1e-10, atol=1e-12
    )


def test_stage_outputs_match_released_network(reference, extractor):
    model = extractor.model
    seen = {}
    hooks = [model.act.register_forward_hook(lambda m, i, o: seen.setdefault("stem_relu", o.clone()))]
    for name in ("maxpool", "layer1", "layer2", "layer3", "layer4"):
        hooks.append(getattr(model, name).register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o)))
    try:
        extractor.features_batch(reference["x2"])
    finally:
        for h in hooks:
            h.remove()
    for stage, shape in reference["stage_shapes_x2"].items():
        assert list(seen[stage].shape) == shape, stage
        means = seen[stage].mean(dim=(2, 3, 4))[0].float()
        torch.testing.assert_close(means, reference["stage_channel_means_x2"][stage], rtol=1e-4, atol=1e-5)


def test_monai_defaults_load_silently_but_give_other_features(reference, weights_file):
    from monai.networks.nets import resnet50

    plain = resnet50(
        spatial_dims=3,
        n_input_channels=1,
        shortcut_type="B",
        bias_downsample=False,
        feed_forward=False,
        conv1_t_stride=2,
    ).eval()
    state = load_medicalnet_state_dict(weights_file)
    plain.load_state_dict(state, strict=True)  # no error: same names and shapes
    with torch.no_grad():
        wrong = plain(reference["x1"][:1])
    assert (wrong - reference["features_x1"][:1]).abs().max() > 1.0
    patched = build_medicalnet_resnet50()
    assert patched.layer4[0].conv2.dilation == (4, 4, 4) and patched.layer3[1].conv2.padding == (2, 2, 2)
    assert patched.layer3[0].downsample[0].stride == (1, 1, 1) and patched.layer2[0].conv2.stride == (2, 2, 2)


def test_weights_loader_accepts_bare_dicts_and_explains_bad_files(tmp_path, weights_file):
    state = load_medicalnet_state_dict(weights_file)
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    assert load_medicalnet_state_dict(bare).keys() == state.keys()
    with pytest.raises(CheckpointError, match="not found"):
        load_medicalnet_state_dict(tmp_path / "missing.pth")
    broken = dict(state)
    del broken["layer4.2.conv3.weight"]
    with pytest.raises(CheckpointError, match="resnet_50_23dataset"):
        MedicalNetFeatureExtractor(broken)
    with pytest.raises(InputShapeError, match="3-D"):
        MedicalNetFeatureExtractor(state).features(np.zeros((2, 8, 8, 8)))


# ----------------------------------------------------------------------------------------------------
# FID and KID
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["fid_full_rank", "fid_rank_deficient"])
def test_frechet_distance_matches_released_values(reference, case):
    ref = reference[case]
    a = FeatureStatistics.from_features(ref["feats_a"].numpy())
    b = FeatureStatistics.from_features(ref["feats_b"].numpy())
    np.testing.assert_allclose(a.mean, ref["mu_a"].numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.cov, ref["sigma_a"].numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(b.cov, ref["sigma_b"].numpy(), rtol=0, atol=1e-12)
    fid = frechet_distance(a.mean, a.cov, b.mean, b.cov)
    assert fid == pytest.approx(ref["fid"].item(), rel=1e-7)
    assert fid == pytest.approx(ref["fid_eig_reference"].item(), rel=1e-7)
    # A set against itself: 0 up to round-off, also with singular covariances.
    assert abs(frechet_distance(a.mean, a.cov, a.mean, a.cov)) < 1e-6 * fid


def test_fid_of_real_features_with_itself_is_zero(reference):
    feats = np.concatenate(
        [
            reference["features_x1_float64"].numpy(),
            reference["features_x2_float64"].numpy(),
        ]
    )
    with pytest.warns(SmallSampleWarning, match="1000"):
        value = fid_from_features(feats, feats)
    assert abs(value) < 1e-6 * float((feats**2).sum())


def test_frechet_distance_gaussian_closed_forms():
    rng = np.random.default_rng(7)
    d = 6
    a = rng.standard_normal((d, d))
    sigma = a @ a.T + 0.1 * np.eye(d)
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    # Scaled covariance: tr((S cS)^(1/2)) = sqrt(c) tr(S).
    c = 2.5
    expected = ((mu_a - mu_b) ** 2).sum() + (1 + c - 2 * math.sqrt(c)) * np.trace(sigma)
    assert frechet_distance(mu_a, sigma, mu_b, c * sigma) == pytest.approx(expected, rel=1e-12)
    # Commuting (diagonal) covariances: the 2-Wasserstein distance sum (sqrt(l_a) - sqrt(l_b))^2.
    la, lb = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(la) - np.sqrt(lb)) ** 2).sum()
    assert frechet_distance(mu_a, np.diag(la), mu_b, np.diag(lb)) == pytest.approx(expected, rel=1e-12)
    # General (non-commuting) covariances against scipy's matrix square root.
    scipy_linalg = pytest.importorskip("scipy.linalg")
    b = rng.standard_normal((d, d))
    sigma_b = b @ b.T
    covmean = scipy_linalg.sqrtm(sigma @ sigma_b).real
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(sigma) + np.trace(sigma_b) - 2 * np.trace(covmean)
    assert frechet_distance(mu_a, sigma, mu_b, sigma_b) == pytest.approx(expected, rel=1e-10)


def test_fid_of_gaussian_samples_approaches_closed_form():
    rng = np.random.default_rng(11)
    d, n, s = 4, 200_000, 0.5
    shift = np.array([1.0, -0.5, 0.0, 0.25])
    x = rng.standard_normal((n, d))
    y = shift + s * rng.standard_normal((n, d))
    expected = (shift**2).sum() + d * (1 - s) ** 2  # = 1.3125 + 1.0
    assert fid_from_features(x, y) == pytest.approx(expected, abs=0.02)


def test_kid_matches_polynomial_kernel_closed_form_and_is_unbiased():
    # d = 1: k(x, y) = (xy + 1)^3, so MMD^2 = sum_k c_k (E_P x^k - E_Q x^k)^2 with c = (3, 3, 1) for k = 1..3.
    # P = N(0, 1), Q = N(m, 1): moments (0, 1, 0) and (m, 1 + m^2, m^3 + 3m).
    rng = np.random.default_rng(3)
    m = 0.5
    expected = 3 * m**2 + 3 * m**4 + (m**3 + 3 * m) ** 2
    x = rng.standard_normal((20_000, 1))
    y = m + rng.standard_normal((20_000, 1))
    kid = kernel_inception_distance(x, y, subsets=40, subset_size=1000, seed=0)
    assert kid.subsets == 40 and kid.subset_size == 1000
    assert kid.mean == pytest.approx(expected, rel=0.05)
    # Same distribution: the unbiased estimate scatters around 0 (negative values are possible).
    same = kernel_inception_distance(x[:10_000], x[10_000:], subsets=40, subset_size=1000, seed=0)
    assert abs(same.mean) < 3 * same.std / math.sqrt(same.subsets) + 1e-3
    # Small N: the subset size shrinks to the set size; one estimate when both sets are that size.
    small = kernel_inception_distance(x[:5], y[:5], subset_size=1000)
    assert (small.subsets, small.subset_size, small.std) == (1, 5, 0.0)
    with pytest.raises(InputShapeError):
        kernel_inception_distance(x[:1], y[:5])


def test_statistics_use_exactly_the_rows_given():
    feats = np.arange(12.0).reshape(4, 3)
    stats = FeatureStatistics.from_features(feats)
    assert stats.count == 4
    np.testing.assert_array_equal(stats.mean, feats.mean(0))
    np.testing.assert_allclose(stats.cov, np.cov(feats, rowvar=False))
    with pytest.raises(InputShapeError, match="At least 2"):
        FeatureStatistics.from_features(feats[:1])
    with pytest.raises(Exception, match="NaN"):
        FeatureStatistics.from_features(np.array([[1.0, np.nan], [0.0, 1.0]]))


# ----------------------------------------------------------------------------------------------------
# MS-SSIM
# ----------------------------------------------------------------------------------------------------


def test_ms_ssim_released_setting_identical_is_one():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(112, 112, 112, generator=g)
    b = (a + 0.2 * torch.rand(112, 112, 112, generator=g)).clamp(0, 1)
    settings = MSSSIMSettings()
    assert settings.min_size == 112 and settings.scales == 5 and settings.kernel_size == 7
    values = ms_ssim(torch.stack([a, a])[:, None], torch.stack([a, b])[:, None], settings)
    assert values[0].item() == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < values[1].item() < 1.0


def test_ms_ssim_small_volumes_error_or_reduced_setting():
    a = torch.full((16, 16, 16), 0.2)
    with pytest.raises(InputShapeError, match="112"):
        ms_ssim(a, a)
    reduced = MSSSIMSettings.reduced((16, 16, 20))
    assert reduced.scales == 2 and reduced.name == "reduced-2-scales"
    assert sum(reduced.weights) == pytest.approx(1.0)
    assert MSSSIMSettings.reduced((128, 128, 128)) == MSSSIMSettings()
    with pytest.raises(InputShapeError, match="too small"):
        MSSSIMSettings.reduced((6, 16, 16))
    # Constant volumes: no variance, so every contrast-structure term is 1 and only the luminance term of the
    # coarsest scale remains: MS-SSIM = l ** w_last with l = (2 c1 c2 + C1) / (c1^2 + c2^2 + C1).
    c1, c2, k1 = 0.2, 0.6, 0.01
    lum = (2 * c1 * c2 + k1**2) / (c1**2 + c2**2 + k1**2)
    value = ms_ssim(a, torch.full((16, 16, 16), c2), reduced).item()
    # rel 2e-3: MONAI computes sigma = E[x^2] - E[x]^2 in float32, whose cancellation noise (~1e-7) is
    # compared with C2 = 9e-4 in the contrast term.
    assert value == pytest.approx(lum ** reduced.weights[-1], rel=2e-3)
    assert ms_ssim(a, a, reduced).item() == pytest.approx(1.0, abs=1e-6)


def test_select_pairs_all_and_seeded_random():
    assert select_pairs(4) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert select_pairs(4, 100) == select_pairs(4)
    pairs = select_pairs(1000, 500, seed=5)
    assert len(set(pairs)) == 500 and all(i < j < 1000 for i, j in pairs) and pairs == sorted(pairs)
    assert pairs == select_pairs(1000, 500, seed=5) and pairs != select_pairs(1000, 500, seed=6)
    with pytest.raises(InputShapeError):
        select_pairs(1)
    with pytest.raises(ConfigError):
        select_pairs(5, 0)


def test_ms_ssim_diversity_equals_mean_over_ordered_pairs():
    g = torch.Generator().manual_seed(1)
    vols = [torch.rand(16, 16, 16, generator=g) * s for s in (1.0, 0.8, 0.5, 0.3)]
    settings = MSSSIMSettings.reduced((16, 16, 16))
    ordered = [ms_ssim(vols[i], vols[j], settings).item() for i in range(4) for j in range(4) if i != j]
    events = []
    result = ms_ssim_diversity(vols, reduced=True, batch_size=2, progress=events.append)
    assert result.pairs == 6 and result.mode == "all" and result.seed is None
    assert result.mean == pytest.approx(np.mean(ordered), abs=1e-6)
    assert ordered[0] == pytest.approx(ordered[3], abs=1e-6)  # MS-SSIM(v0, v1) == MS-SSIM(v1, v0)
    assert events[-1]["task"] == "ms-ssim" and events[-1]["done"] == events[-1]["total"] == 6
    some = ms_ssim_diversity(vols, pairs=3, seed=2, reduced=True)
    assert (some.pairs, some.mode, some.seed) == (3, "random", 2)
    with pytest.raises(InputShapeError, match="one shape"):
        ms_ssim_diversity([*vols, torch.rand(16, 16, 18)], reduced=True)


# ----------------------------------------------------------------------------------------------------
# Volumes on disk, evaluate(), the statistics cache, the command
# ----------------------------------------------------------------------------------------------------


def _write_set(folder, volumes):
    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(volumes):
        nib.save(
            nib.Nifti1Image(np.asarray(v, dtype=np.float32), np.eye(4)),
            folder / f"sample_0_{i}.nii.gz",
        )
    return folder


@pytest.fixture(scope="module")
def tiny_sets(tmp_path_factory):
    """Real: 3 blurred-noise volumes 16^3; generated: 3 dimmer ones (values in [0, 1])."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("sets")

    def volume(scale):
        v = rng.random((16, 16, 16)) * scale
        return (v + np.roll(v, 1, 0) + np.roll(v, 1, 1)) / 3

    real = _write_set(root / "real", [volume(1.0) for _ in range(3)])
    fake = _write_set(root / "fake", [volume(0.7) for _ in range(3)])
    return real, fake


class CountingReader(NiftiReader):
    def __init__(self, tag="count"):
        self.calls = 0
        self.config = {"reader": "nifti", "tag": tag}

    def __call__(self, path):
        self.calls += 1
        return super().__call__(path)


def test_evaluate_small_sets_warns_and_uses_exactly_the_volumes_read(tiny_sets, extractor):
    real, fake = tiny_sets
    real_files, fake_files = (
        sorted(real.glob("*.nii.gz")),
        sorted(fake.glob("*.nii.gz")),
    )
    events = []
    with pytest.warns(SmallSampleWarning, match="1000"):
        report = evaluate(
            real_files,
            fake_files,
            extractor,
            ms_ssim_reduced=True,
            progress=events.append,
        )
    assert (report.n_real, report.n_fake) == (3, 3)
    # Independent features of exactly these files (as one batch per set: fp32 differs by <= 1e-5).
    read = NiftiReader()
    real_feats, fake_feats = (
        extractor.features_batch(torch.stack([torch.from_numpy(read(p)) for p in files])[:, None]).numpy()
        for files in (real_files, fake_files)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        assert report.fid == pytest.approx(fid_from_features(real_feats, fake_feats), rel=1e-4)
    assert np.isfinite(report.fid) and report.fid > 0
    assert report.kid.subset_size == 3
    data = report.to_dict()
    assert data["fid"]["comparable_with_paper"] is False
    assert any("1000" in w for w in data["warnings"]) and any("reduced" in w for w in data["warnings"])
    assert data["ms_ssim"]["pairs"] == 3 and data["ms_ssim"]["settings"]["name"] == "reduced-2-scales"
    assert data["real"]["shapes"] == [[16, 16, 16]]
    assert {e["task"] for e in events} == {"embed-real", "embed-fake", "ms-ssim"}
    json.dumps(data)  # plain JSON types only
    assert "FID (MedicalNet)" in report.format_table()


def test_real_statistics_cache_hit_miss_and_invalidation(tiny_sets, extractor, tmp_path):
    real, _ = tiny_sets
    files = sorted(real.glob("*.nii.gz"))
    reader = CountingReader()
    first, _, status = real_statistics(files, extractor, reader, cache_dir=tmp_path)
    assert status == "miss" and reader.calls == 3
    second, summary, status = real_statistics(files, extractor, reader, cache_dir=tmp_path)
    assert status == "hit" and reader.calls == 3 and summary.count == 3
    np.testing.assert_array_equal(second.mean, first.mean)
    np.testing.assert_array_equal(second.cov, first.cov)
    np.testing.assert_array_equal(second.features, first.features)
    other = CountingReader(tag="other preprocessing")
    _, _, status = real_statistics(files, extractor, other, cache_dir=tmp_path)
    assert status == "miss" and other.calls == 3
    _, _, status = real_statistics(files[:2], extractor, reader, cache_dir=tmp_path)
    assert status == "miss"


def _parse(argv):
    parser = argparse.ArgumentParser(prog="wdm")
    eval_command.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_command_writes_report_uses_cache_and_streams_jsonl(tiny_sets, weights_file, tmp_path, capsys):
    real, fake = tiny_sets
    out = tmp_path / "report.json"
    argv = [
        "evaluate",
        "--real",
        str(real),
        "--fake",
        str(fake),
        "--medicalnet",
        str(weights_file),
    ]
    argv += [
        "--device",
        "cpu",
        "--out",
        str(out),
        "--stats-cache",
        str(tmp_path / "cache"),
    ]
    argv += [
        "--ms-ssim-pairs",
        "2",
        "--ms-ssim-reduced",
        "--seed",
        "3",
        "--progress",
        "jsonl",
    ]
    args = _parse(argv)
    assert args.handler is eval_command.run and args.format == "nifti"
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallSampleWarning)  # reported in the table and JSON, not re-printed
        assert eval_command.run(args) == 0
    captured = capsys.readouterr()
    assert "1000" in captured.err  # the table (on stderr with --progress jsonl) carries the N warning
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert lines[-1]["event"] == "result" and lines[-1]["path"] == str(out)
    assert {e.get("task") for e in lines if e["event"] == "progress"} == {
        "embed-real",
        "embed-fake",
        "ms-ssim",
    }
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["fid"]["n_real"] == 3 and report["fid"]["n_fake"] == 3
    assert report["real_statistics_cache"] == "miss"
    assert report["ms_ssim"]["mode"] == "random" and report["ms_ssim"]["seed"] == 3
    assert report["ms_ssim"]["pairs"] == 2
    assert report["fid"]["comparable_with_paper"] is False and "1000" in report["warnings"][0]

    assert eval_command.run(_parse(argv)) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    again = json.loads(out.read_text(encoding="utf-8"))
    assert again["real_statistics_cache"] == "hit"
    assert "embed-real" not in {e.get("task") for e in lines}
    assert again["fid"]["value"] == pytest.approx(report["fid"]["value"], rel=1e-12)


def test_command_errors_are_explained(tiny_sets, weights_file, tmp_path, capsys):
    real, fake = tiny_sets
    base = [
        "evaluate",
        "--real",
        str(real),
        "--fake",
        str(fake),
        "--device",
        "cpu",
        "--no-stats-cache",
    ]
    base += ["--out", str(tmp_path / "r.json"), "--progress", "none"]
    code = eval_command.run(_parse([*base, "--medicalnet", str(weights_file), "--format", "brats"]))
    assert code == 2 and "BraTS" in capsys.readouterr().err  # plain files are not a BraTS dataset root
    code = eval_command.run(_parse([*base, "--medicalnet", str(tmp_path / "nope.pth")]))
    assert code == 2 and "resnet_50_23dataset.pth" in capsys.readouterr().err
    code = eval_command.run(_parse([*base, "--medicalnet", str(weights_file)]))  # 16^3, released MS-SSIM
    assert code == 2 and "112" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    code = eval_command.run(_parse([*base[:4], str(empty), *base[5:], "--medicalnet", str(weights_file)]))
    assert code == 2 and "No volume files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse([*base, "--medicalnet", "x", "--ms-ssim-pairs", "0"])
    assert not os.path.exists(tmp_path / "r.json")


def test_brats_real_volumes_use_the_training_preprocessing_in_0_1(tmp_path):
    import nibabel as nib

    from wdmcore.data import PreprocessConfig, discover, preprocess
    from wdmcore.evaluation.volumes import reader_for_format, real_volume_files

    case_dir = tmp_path / "BraTS-GLI-00001-000"
    case_dir.mkdir()
    volume = np.random.default_rng(0).gamma(2.0, 50.0, size=(240, 240, 155)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), case_dir / "BraTS-GLI-00001-000-t1n.nii.gz")
    files = real_volume_files(tmp_path, "brats")
    assert files == [case_dir / "BraTS-GLI-00001-000-t1n.nii.gz"]
    read = reader_for_format("brats", 128)
    real01 = read(files[0])
    assert real01.shape == (128, 128, 128) and real01.min() >= 0 and real01.max() <= 1
    training = preprocess(discover(tmp_path, format="brats")[0], PreprocessConfig(preset="brats", size=128)).array
    np.testing.assert_allclose(2 * real01 - 1, training, atol=1e-6)
    assert read.config["reader"] == "brats" and read.config["size"] == 128


def test_every_format_wdm_sample_writes_is_read_as_the_same_array(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    from wdmcore.volumes.writing import save_volume

    assert sitk is not None
    volume = np.random.default_rng(4).random((6, 8, 10)).astype(np.float32)
    affine = np.diag([2.0, 1.5, 1.0, 1.0])
    paths = [save_volume(volume, affine, tmp_path / f"v.{fmt}", sidecar=False) for fmt in ("nii.gz", "nii", "nrrd")]
    reader = NiftiReader()
    for path in paths:
        np.testing.assert_allclose(reader(path), volume, atol=1e-6)
    assert sorted(p.name for p in list_volumes(tmp_path)) == ["v.nii", "v.nii.gz", "v.nrrd"]


def test_command_without_medicalnet_computes_ms_ssim_only_on_a_mixed_folder(tiny_sets, tmp_path, capsys):
    pytest.importorskip("SimpleITK")
    from wdmcore.volumes.writing import save_volume

    _, fake = tiny_sets
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, path in enumerate(sorted(fake.iterdir())):
        fmt = "nrrd" if i % 2 else "nii.gz"  # wdm sample --format nrrd next to NIfTI files
        save_volume(NiftiReader()(path), np.eye(4), mixed / f"s{i}.{fmt}", sidecar=False)
    out = tmp_path / "offline.json"
    argv = ["evaluate", "--fake", str(mixed), "--ms-ssim-reduced", "--device", "cpu", "--out", str(out)]
    assert eval_command.run(_parse([*argv, "--progress", "none"])) == 0
    table = capsys.readouterr().out
    assert "MS-SSIM (generated)" in table and "FID (MedicalNet)" not in table
    assert "not computed: FID: needs the MedicalNet weights" in table and "not computed: KID" in table
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["fid"] is None and report["kid"] is None and set(report["not_computed"]) == {"FID", "KID"}
    assert report["fake"]["count"] == 3 and report["ms_ssim"]["pairs"] == 3  # all three files, both formats
    direct = ms_ssim_diversity(sorted(fake.iterdir()), read=NiftiReader(), pairs="all", reduced=True)
    assert report["ms_ssim"]["mean"] == pytest.approx(direct.mean, abs=1e-6)

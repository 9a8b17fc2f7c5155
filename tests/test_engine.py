import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mempipe.data.demo_data import make_sample
from mempipe.engine import Given, MEMConfig, preset, protect_unit
from mempipe.engine import mem
from mempipe.engine.convolution import convolution_noise, random_filters
from mempipe.engine.patterns import pattern_noise
from mempipe.engine.hotflip import Candidates, hotflip_batch
from mempipe.engine.losses import clip_loss, group_swap_losses
from mempipe.engine.surrogate import build_model, save_checkpoint
from mempipe.engine.text import compose, decode_trigger, encode_captions, tokenizer, trigger_vocabulary
from mempipe.io.images import apply_noise_native, to_surrogate_input

TINY = MEMConfig(outer_iters=2, train_steps=4, pgd_steps=3, hotflip_iters=1, candidates=4, batch_size=16,
                 clusters=4, seed=5)


def demo(n, seed=0):
    samples = [make_sample(i, 64, seed) for i in range(n)]
    images = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2).contiguous()
    return images, [s[1] for s in samples]


@settings(max_examples=60, deadline=None)
@given(h=st.integers(8, 90), w=st.integers(8, 90), eps=st.integers(1, 32), seed=st.integers(0, 10_000),
       size=st.sampled_from([16, 32, 64]))
def test_noise_at_native_resolution_respects_the_linf_bound(h, w, eps, seed, size):
    rng = np.random.RandomState(seed)
    pixels = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
    noise = rng.randint(-eps, eps + 1, (size, size, 3)).astype(np.int8)
    out = apply_noise_native(pixels, noise, eps)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - pixels.astype(int)).max() <= eps


def test_native_noise_survives_the_victims_preprocessing():
    rng = np.random.RandomState(0)
    pixels = np.full((96, 160, 3), 128, np.uint8)
    noise = rng.choice([-8, 8], size=(64, 64, 3)).astype(np.int8)
    out = apply_noise_native(pixels, noise, 8)
    seen = to_surrogate_input(out, 64).astype(float) - to_surrogate_input(pixels, 64).astype(float)
    corr = np.corrcoef(seen.ravel(), noise.ravel())[0, 1]
    assert corr > 0.6
    assert (out[:, :32] == 128).all()  # outside the center square nothing changes


def test_trigger_tokens_round_trip_as_text():
    allowed = trigger_vocabulary()
    ids = allowed.nonzero().squeeze(1)[torch.randperm(int(allowed.sum()), generator=torch.Generator().manual_seed(0))[:200]]
    tok = tokenizer()
    for start in range(0, 200, 5):
        trig = ids[start : start + 5].tolist()
        caption = decode_trigger(trig) + " " + "a small red circle on the left"
        assert tok.encode(caption)[:5] == trig
    assert not allowed[tok.sot_token_id] and not allowed[tok.eot_token_id]


def test_compose_places_trigger_after_start_token():
    body, lengths = encode_captions(["a red circle", "two blue squares on a plain wall"], 30)
    trig = torch.tensor([[1000, 1001], [2000, 2001]])
    tokens = compose(trig, body, lengths, 32)
    tok = tokenizer()
    assert tokens[0, 0] == tok.sot_token_id and tokens[0, 1:3].tolist() == [1000, 1001]
    assert tokens[0, 3 : 3 + int(lengths[0])].tolist() == body[0, : int(lengths[0])].tolist()
    assert tokens[0, 3 + int(lengths[0])] == tok.eot_token_id and tokens[0].argmax() == 3 + int(lengths[0])


@pytest.mark.parametrize("scale, aligned", [(10.0, False), (100.0, False), (100.0, True)])
@pytest.mark.parametrize("groups", [[0, 0, 1, 2, 2, 2, 1, 0], list(range(8)), [0] * 8])
def test_group_swap_losses_are_exact(scale, aligned, groups):
    torch.manual_seed(0)
    normal = lambda t: torch.nn.functional.normalize(t, dim=1)  # noqa: E731
    img = normal(torch.randn(8, 16))
    # aligned: a well-trained surrogate, each image's own text far ahead (logit gaps near 200 nats)
    cur = normal(img + 0.05 * torch.randn(8, 16)) if aligned else normal(torch.randn(8, 16))
    cand = normal(torch.randn(8, 16))
    groups = torch.tensor(groups)
    n_groups = int(groups.max()) + 1
    got = group_swap_losses(img, cur, cand, groups, n_groups, scale)
    for g in range(n_groups):
        mixed = torch.where((groups == g)[:, None], cand, cur)
        expected = clip_loss(img.double(), mixed.double(), scale).float()
        assert torch.isfinite(got[g]) and torch.allclose(got[g], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scope", ["sample", "cluster", "global"])
def test_hotflip_never_leaves_a_batch_worse(scope):
    images, captions = demo(24)
    model = build_model("tiny-vit", 64, 32, seed=0).eval()
    body, lengths = encode_captions(captions, 30)
    gen = torch.Generator().manual_seed(1)
    groups = {"sample": torch.arange(24), "cluster": torch.arange(24) % 4, "global": torch.zeros(24, dtype=torch.long)}[scope]
    n_groups = int(groups.max()) + 1
    from mempipe.engine.text import random_trigger_ids

    trigger = random_trigger_ids(n_groups, 3, gen)
    with torch.no_grad():
        feats = model.encode_image(images.float() / 255)
    new, before, after = hotflip_batch(model, feats, trigger, groups, body, lengths, Candidates(trigger_vocabulary(), 6, 3))
    assert after <= before + 1e-6
    assert new.shape == trigger.shape and trigger_vocabulary()[new].all()
    with torch.no_grad():
        again = clip_loss(feats, model.encode_text(compose(new[groups], body, lengths, 32)), model.logit_scale())
    assert abs(again.item() - after) < 1e-4


def test_pgd_lowers_the_loss_and_keeps_each_image_with_its_own_trigger():
    images, captions = demo(32)
    cfg = TINY.with_overrides(pgd_steps=6, batch_size=32)
    unit = mem.UnitTensors(images, captions, cfg, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    unit.set_groups(None, gen)
    model = build_model("tiny-vit", 64, 32, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mem.train_surrogate(model, opt, unit, cfg.with_overrides(train_steps=10), gen, torch.device("cpu"))
    first, last = mem.pgd_round([model], unit, cfg, gen)
    assert last < first
    assert unit.noise().abs().max() <= cfg.epsilon and unit.noise().abs().max() > 0

    # caption shuffling: the captions move, each image's trigger stays with it
    idx = torch.arange(8)
    perm = torch.tensor([3, 1, 0, 2, 7, 6, 5, 4])
    tokens = unit.tokens(idx, idx[perm])
    k = cfg.trigger_len
    assert torch.equal(tokens[:, 1 : 1 + k], unit.trigger[idx])
    assert torch.equal(tokens[:, 1 + k : 1 + k + 4], unit.body[perm, :4])


def test_determinism_per_seed():
    images, captions = demo(20)
    a = protect_unit(images, captions, TINY)
    b = protect_unit(images, captions, TINY)
    c = protect_unit(images, captions, TINY.with_overrides(seed=6))
    assert torch.equal(a.noise, b.noise) and torch.equal(a.trigger_ids, b.trigger_ids)
    assert not torch.equal(a.noise, c.noise)


def test_mem_output_shapes_and_bounds():
    images, captions = demo(20)
    out = protect_unit(images, captions, TINY)
    assert out.noise.dtype == torch.int8 and out.noise.shape == images.shape
    assert out.noise.abs().max() <= 8
    assert out.trigger_ids.shape == (20, 3) and len({tuple(t) for t in out.trigger_ids.tolist()}) > 1
    assert [e["round"] for e in out.log] == [0, 1] and "hotflip_loss_after" in out.log[0]


def test_trigger_scopes_share_triggers_as_asked():
    images, captions = demo(24)
    glob = protect_unit(images, captions, TINY.with_overrides(trigger_scope="global"))
    assert len({tuple(t) for t in glob.trigger_ids.tolist()}) == 1
    clus = protect_unit(images, captions, TINY.with_overrides(trigger_scope="cluster"))
    assert clus.cluster_ids is not None
    for c in clus.cluster_ids.unique():
        members = clus.trigger_ids[clus.cluster_ids == c]
        assert (members == members[0]).all()


def test_baselines_produce_their_kind_of_noise():
    images, captions = demo(24)
    rnd = protect_unit(images, captions, TINY.with_overrides(method="random"))
    assert rnd.trigger_ids.shape[1] == 0 and rnd.noise.abs().max() <= 8
    assert (rnd.noise != 0).float().mean() > 0.8  # dense uniform noise
    em = protect_unit(images, captions, TINY.with_overrides(method="em"))
    assert em.trigger_ids.shape[1] == 0 and em.noise.abs().max() <= 8 and em.noise.abs().sum() > 0
    uc = protect_unit(images, captions, TINY.with_overrides(method="uc"))
    assert uc.cluster_ids is not None
    for c in uc.cluster_ids.unique():
        members = uc.noise[uc.cluster_ids == c]
        assert (members == members[0]).all()  # one pattern per cluster (pixel clamping happens at write time)


def test_surrogate_by_name_and_from_a_saved_checkpoint(tmp_path):
    model = build_model("tiny-resnet", 64, 32, seed=0)
    path = tmp_path / "tiny.pt"
    save_checkpoint(model, str(path))
    loaded = build_model("tiny-resnet", 64, 32, checkpoint=str(path))
    x = torch.rand(2, 3, 64, 64)
    model.eval(), loaded.eval()
    assert torch.allclose(model.encode_image(x), loaded.encode_image(x), atol=1e-6)

    rn = build_model("RN50", 64, 32, seed=0)
    assert rn.encode_image(torch.rand(1, 3, 64, 64)).shape[1] == 1024
    vit = build_model("ViT-B-32", 224, 77, checkpoint=None, seed=0)
    assert vit.context_length == 77
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("no-such-model", 64, 32)


def test_open_clip_checkpoint_file_loads_through_open_clip(tmp_path):
    import open_clip

    clip = open_clip.create_model("RN50", force_image_size=64)
    path = tmp_path / "rn50_open_clip.pt"
    torch.save({"state_dict": clip.state_dict()}, path)
    loaded = build_model("RN50", 64, 77, checkpoint=str(path))  # open_clip's own loader reads the file
    assert torch.equal(loaded.clip.visual.conv1.weight, clip.visual.conv1.weight)


def test_presets():
    paper = preset("paper")
    assert (paper.arch, paper.image_size, paper.epsilon, paper.alpha, paper.pgd_steps, paper.outer_iters,
            paper.train_steps, paper.hotflip_iters, paper.candidates, paper.batch_size) == (
        "RN50", 224, 8, 1, 8, 20, 200, 5, 16, 128)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("nope")


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(0, 4))
def test_trigger_inserted_at_a_word_boundary_tokenizes_like_the_written_caption(seed, k):
    """What the surrogate sees (compose with insert_at) is what a victim re-tokenizes from the .txt."""
    from mempipe.engine.text import insert_words, word_boundaries

    rng = np.random.RandomState(seed)
    words = ["a", "red", "circle,", "on", "the", "left", "big", "striped", "wall", "at", "the", "centre"]
    captions = [" ".join(rng.choice(words, rng.randint(1, 12))) for _ in range(6)]
    body, lengths = encode_captions(captions, 30)
    allowed = trigger_vocabulary().nonzero().squeeze(1)
    trigger = allowed[torch.from_numpy(rng.randint(0, len(allowed), (6, k)))]
    word_index, offsets = word_boundaries(captions, torch.Generator().manual_seed(seed))
    tokens = compose(trigger, body, lengths, 32, offsets)
    for i, caption in enumerate(captions):
        written = insert_words(caption, decode_trigger(trigger[i].tolist()), int(word_index[i]))
        expected = [tokenizer().sot_token_id] + tokenizer().encode(written) + [tokenizer().eot_token_id]
        assert tokens[i, : len(expected)].tolist() == expected
        assert (tokens[i, len(expected):] == 0).all()


def test_hotflip_reads_the_gradient_where_the_trigger_sits():
    from mempipe.engine.text import word_boundaries

    images, captions = demo(12)
    model = build_model("tiny-vit", 64, 32, seed=0).eval()
    body, lengths = encode_captions(captions, 30)
    _, offsets = word_boundaries(captions, torch.Generator().manual_seed(1))
    assert (offsets > 0).any()
    with torch.no_grad():
        feats = model.encode_image(images.float() / 255)
    trigger = torch.tensor([[tokenizer().encode(w)[0] for w in ("apple", "river", "stone")]] * 12)
    groups = torch.arange(12)
    new, before, after = hotflip_batch(model, feats, trigger, groups, body, lengths, Candidates(trigger_vocabulary(), 6, 3),
                                       offsets)
    assert after <= before + 1e-6 and trigger_vocabulary()[new].all()
    with torch.no_grad():
        again = clip_loss(feats, model.encode_text(compose(new, body, lengths, 32, offsets)), model.logit_scale())
    assert abs(again.item() - after) < 1e-4


def test_cluster_plus_sample_noise_shares_a_pattern_and_stays_within_epsilon():
    images, captions = demo(40)
    cfg = TINY.with_overrides(noise_scope="cluster+sample", cluster_share=0.5, epsilon=8, pgd_steps=4)
    out = protect_unit(images, captions, cfg)
    assert out.noise.abs().max() <= 8
    assert cfg.noise_bounds() == {"cluster": 4, "sample": 4}
    # within a cluster only the per-sample parts (each within 4) differ: at most 8 apart, where
    # independent per-sample noise within 8 could be 16 apart
    spreads = [(m.max(0).values - m.min(0).values).max().item()
               for c in out.cluster_ids.unique() if len(m := out.noise[out.cluster_ids == c].int()) > 1]
    assert spreads and max(spreads) <= 8
    with pytest.raises(ValueError, match="epsilon >= 2"):
        MEMConfig(noise_scope="cluster+sample", epsilon=1, alpha=1)


def test_joint_objective_random_placement_and_vocabularies_run_end_to_end():
    from mempipe.engine.text import COMMON_WORD_IDS, vocabulary_mask

    images, captions = demo(24)
    cfg = TINY.with_overrides(pgd_objective="joint", trigger_placement="random", trigger_vocab="common")
    out = protect_unit(images, captions, cfg)
    assert out.trigger_word_index is not None and len(out.trigger_word_index) == 24
    assert out.trigger_word_index.max() > 0
    assert (out.trigger_ids < COMMON_WORD_IDS).all()
    body, _ = encode_captions(captions, 30)
    seen = set(body[body > 0].tolist())
    caption_vocab = vocabulary_mask("captions", body)
    assert set(caption_vocab.nonzero().squeeze(1).tolist()) <= seen
    words = protect_unit(images, captions, TINY.with_overrides(trigger_vocab="captions"))
    assert set(words.trigger_ids.flatten().tolist()) <= seen
    with pytest.raises(ValueError, match="joint objective needs a trigger"):
        MEMConfig(method="em", pgd_objective="joint")


@pytest.mark.parametrize("arch, size, ctx", [("tiny-vit", 64, 32), ("tiny-resnet", 64, 32), ("RN50", 224, 77)])
def test_text_features_skip_the_padding_exactly(arch, size, ctx):
    """encode_text runs the text tower on the batch's used positions only; the result is open_clip's."""
    model = build_model(arch, size, ctx, seed=0).eval()
    captions = ["a red circle", "two green squares on a grey field beside a small blue star", ""]
    body, lengths = encode_captions(captions, ctx - 2)
    tokens = compose(torch.tensor([[1125, 2866, 3360]] * 3), body, lengths, ctx)
    with torch.no_grad():
        trimmed = model.encode_text(tokens)
        full = torch.nn.functional.normalize(model.clip.encode_text(tokens), dim=-1)
    assert model._causal_text
    assert torch.allclose(trimmed, full, atol=1e-6)
    assert mem_trim_width(tokens, ctx) < ctx  # the padding really was cut


def mem_trim_width(tokens, ctx):
    from mempipe.engine.surrogate import trim_padding

    width = trim_padding(tokens, ctx).shape[1]
    assert width % 8 == 0 or width == ctx
    assert width > int(tokens.argmax(dim=1).max())  # every end token kept
    return width


def test_pgd_batch_size_sets_the_pgd_batch_only(monkeypatch):
    images, captions = demo(32)
    sizes = []
    real = mem._batches
    monkeypatch.setattr(mem, "_batches", lambda n, size, gen: sizes.append(size) or real(n, size, gen))
    out = protect_unit(images, captions, TINY.with_overrides(batch_size=8, pgd_batch_size=32, outer_iters=1))
    # surrogate training and HotFlip keep the surrogate batch; PGD takes the whole unit at once
    assert sorted(set(sizes)) == [8, 32]
    assert out.log[0]["pgd_loss_last"] < out.log[0]["pgd_loss_first"]
    assert 0 < out.noise.abs().max() <= TINY.epsilon
    with pytest.raises(ValueError, match="positive"):
        TINY.with_overrides(pgd_batch_size=-1)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on a CPU needs a C++ compiler")
def test_compiled_towers_give_the_eager_result():
    """torch.compile (inductor, on this CPU) must not change what MEM computes beyond float noise."""
    images, captions = demo(16)
    cfg = TINY.with_overrides(outer_iters=1, batch_size=16)
    eager = protect_unit(images, captions, cfg)
    compiled = protect_unit(images, captions, cfg.with_overrides(compile=True))
    for key in ("surrogate_loss", "pgd_loss_first", "pgd_loss_last"):
        assert compiled.log[0][key] == pytest.approx(eager.log[0][key], rel=1e-3)
    # PGD takes sign steps: a gradient entry near zero may flip, nothing more
    assert (compiled.noise == eager.noise).float().mean() > 0.97


def test_a_unit_starts_from_the_shared_surrogate_without_changing_it():
    from mempipe.engine.mem import train_shared_surrogate, unit_config

    images, captions = demo(24, seed=5)
    cfg = preset("cpu-tiny").with_overrides(outer_iters=2, train_steps=3, pgd_steps=2, hotflip_iters=1, candidates=2,
                                            batch_size=8, trigger_scope="sample", surrogate="shared",
                                            unit_train_steps=2)
    shared = train_shared_surrogate(images, captions, cfg)
    before = {k: v.clone() for k, v in shared.state_dict().items()}
    assert unit_config(cfg).train_steps == 2 and unit_config(cfg.with_overrides(surrogate="per-unit")).train_steps == 3
    result = protect_unit(images, captions, unit_config(cfg), given=Given(surrogate=shared))
    assert all(torch.equal(before[k], v) for k, v in shared.state_dict().items())   # units fine-tune a copy
    assert result.noise.abs().max() <= cfg.epsilon and result.trigger_ids.shape == (24, 3)
    # the unit really started from the shared weights: with no fine-tune steps its first PGD loss
    # is the shared model's, not a fresh model's
    frozen = protect_unit(images, captions, cfg.with_overrides(train_steps=0), given=Given(surrogate=shared))
    fresh = protect_unit(images, captions, cfg.with_overrides(train_steps=0, surrogate="per-unit"))
    assert frozen.log[0]["pgd_loss_first"] != fresh.log[0]["pgd_loss_first"]


def test_convolution_noise_blurs_each_group_with_its_own_filter():
    images, _ = demo(12)
    groups = torch.tensor([0, 1, 2] * 4)
    noise = convolution_noise(images, groups, 3, 0.3, 127, torch.Generator().manual_seed(3))
    filters = random_filters(3, 3, 0.3, torch.Generator().manual_seed(3))   # the same draw
    assert torch.allclose(filters.sum(dim=(-2, -1)), torch.ones(3, 3, 1))
    padded = torch.nn.functional.pad(images.float(), (1, 1, 1, 1), mode="reflect")
    for i, g in enumerate(groups.tolist()):
        expected = torch.nn.functional.conv2d(padded[i:i + 1], filters[g], groups=3).round().clamp(0, 255)
        assert torch.equal(images[i].float() + noise[i].float(), expected[0])
    # a blur: flat images are left alone, and the images lose edge energy (per image up to rounding)
    flat = torch.full((2, 3, 16, 16), 90, dtype=torch.uint8)
    assert convolution_noise(flat, torch.tensor([0, 1]), 3, 0.3, 127, torch.Generator()).abs().max() == 0
    blurred = images.float() + noise.float()
    edges = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()  # noqa: E731
    assert edges(blurred) < 0.97 * edges(images.float())
    assert all(edges(blurred[i]) <= edges(images[i].float()) + 0.01 for i in range(12))
    # the int8 clamp is the only bound
    assert convolution_noise(images, groups, 3, 5.0, 4, torch.Generator()).abs().max() == 4


def test_conv_method_shares_a_filter_per_cluster_and_is_not_eps_bounded():
    images, captions = demo(32)
    cfg = TINY.with_overrides(method="conv", noise_scope="cluster", epsilon=127)
    out = protect_unit(images, captions, cfg)
    assert out.trigger_ids.shape[1] == 0 and out.cluster_ids is not None and len(out.log) == cfg.outer_iters
    assert out.noise.abs().max() > 32   # a blur moves edges by more than any eps budget here
    # per image (the control): every image its own filter, so the noise is not the clustered one
    sample = protect_unit(images, captions, cfg.with_overrides(noise_scope="sample"))
    assert sample.cluster_ids is None and not torch.equal(sample.noise, out.noise)
    with pytest.raises(ValueError, match="1..32"):
        MEMConfig(method="em", epsilon=64)
    with pytest.raises(ValueError, match="conv needs"):
        MEMConfig(method="conv", noise_scope="cluster+sample")


def test_pattern_noise_is_one_coarse_eps_pattern_per_group_inside_the_pixel_range():
    images, _ = demo(12)
    groups = torch.tensor([0, 1, 2] * 4)
    noise = pattern_noise(images, groups, 4, 8, seed=1).float()
    after = images.float() + noise
    assert noise.abs().max() == 8 and after.min() >= 0 and after.max() <= 255
    # where the pixel range does not cut it, each image carries exactly +-eps, and its group's pattern
    mid = (images.float() >= 8) & (images.float() <= 247)
    assert bool((noise.abs() == 8)[mid].all())
    for i in range(3, 12):
        both = mid[i] & mid[i % 3]
        assert int(both.sum()) > 100 and torch.equal(noise[i][both], noise[i % 3][both])
    # different groups draw different patterns
    grey = torch.full((3, 3, 16, 16), 128, dtype=torch.uint8)
    full = pattern_noise(grey, torch.tensor([0, 1, 2]), 4, 8, seed=1)
    assert not torch.equal(full[0], full[1]) and not torch.equal(full[1], full[2])
    # a group's pattern depends on the seed and its id only: units protected apart agree
    assert torch.equal(pattern_noise(grey[:1], torch.tensor([2]), 4, 8, seed=1)[0], full[2])
    assert not torch.equal(pattern_noise(grey[:1], torch.tensor([2]), 4, 8, seed=2)[0], full[2])
    # a block pattern: within a block every pixel has the same value
    assert full[:, :, :4, :4].flatten(2).unique(dim=2).shape[2] == 1


def test_pattern_method_shares_a_pattern_per_cluster_and_the_sample_scope_does_not():
    images, captions = demo(32)
    cfg = TINY.with_overrides(method="pattern", noise_scope="cluster", clusters=4)
    out = protect_unit(images, captions, cfg)
    assert out.trigger_ids.shape[1] == 0 and out.cluster_ids is not None and out.noise.abs().max() <= 8
    # two images of one cluster carry the same noise wherever neither pixel is cut by the range
    mid = (images.float() >= 8) & (images.float() <= 247)
    compared = 0
    for c in out.cluster_ids.unique().tolist():
        members = [i for i in range(32) if out.cluster_ids[i] == c]
        for i in members[1:]:
            both = mid[members[0]] & mid[i]
            assert torch.equal(out.noise[members[0]][both], out.noise[i][both])
            compared += int(both.sum())
    assert compared > 1000
    sample = protect_unit(images, captions, cfg.with_overrides(noise_scope="sample"))
    assert sample.cluster_ids is None and not torch.equal(sample.noise, out.noise)
    with pytest.raises(ValueError, match="pattern needs"):
        MEMConfig(method="pattern", noise_scope="cluster+sample")


def test_field_specs_read_each_settings_type_including_optional_ones(monkeypatch):
    """The command line is made from these: a setting typed ``int | None`` must give int, not fail."""
    from dataclasses import dataclass

    from mempipe.engine import config

    specs = {name: kind for name, kind, *_ in MEMConfig.field_specs()}
    assert specs["epsilon"] is int and specs["checkpoint"] is str and specs["lr"] is float

    @dataclass(frozen=True)
    class WithOptional(MEMConfig):
        max_units: int | None = None

    monkeypatch.setitem(config.HELP, "max_units", "at most this many units")
    assert {name: kind for name, kind, *_ in WithOptional.field_specs()}["max_units"] is int

"""The first client: open_clip_train's own webdataset loader reads the protected shards, in the
environment the README installs (webdataset pinned to what open_clip_train expects)."""
from argparse import Namespace

import torch
from mempipe_research.testing import fast_config as write_fast_config
from mempipe.cli import main
from mempipe.io.shards import iter_shard


def test_open_clip_train_get_wds_dataset_reads_protected_shards(demo_small, tmp_path):
    import open_clip
    from open_clip_train.data import get_wds_dataset

    out = tmp_path / "protected"
    cfg = write_fast_config(tmp_path, outer_iters=1, train_steps=2, pgd_steps=1, candidates=2)
    assert main(["protect", str(demo_small / "test"), str(out), "--config", str(cfg), "--no-ray", "--quiet"]) == 0
    captions = {s.caption for s in iter_shard(str(out / "00000.tar"))}
    args = Namespace(train_data=str(out / "00000.tar"), val_data=None, train_num_samples=60, val_num_samples=None,
                     dataset_resampled=False, train_data_upsampling_factors=None, seed=0, batch_size=20, workers=0,
                     world_size=1)
    preprocess = open_clip.image_transform(32, is_train=False)
    tokenizer = open_clip.get_tokenizer("RN50")
    info = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=tokenizer)
    images, texts = [], []
    for image, text in info.dataloader:
        images.append(image)
        texts.append(text)
    images, texts = torch.cat(images), torch.cat(texts)
    assert images.shape == (60, 3, 32, 32) and texts.shape == (60, 77)
    # the loader's tokens are the protected captions (trigger words included), every one of them
    expected = tokenizer(sorted(captions))
    assert sorted(map(tuple, texts.tolist())) == sorted(map(tuple, expected.tolist()))

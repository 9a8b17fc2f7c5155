"""A real img2dataset crawl from a loopback HTTP server, read back with mempipe's reader."""
import pandas as pd

from mempipe.demo_data import make_sample
from mempipe.shards import iter_shard, list_shards
from PIL import Image


def test_img2dataset_output_reads_back(tmp_path, http_folder):
    from img2dataset import download

    folder, base = http_folder
    rows = []
    for i in range(12):
        pixels, caption, _ = make_sample(i, 64, seed=1)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=95)
        rows.append({"url": f"{base}/{i}.jpg", "caption": caption})
    rows.append({"url": f"{base}/missing.jpg", "caption": "a broken link"})
    pd.DataFrame(rows).to_parquet(tmp_path / "urls.parquet")
    out = tmp_path / "crawl"
    download(url_list=str(tmp_path / "urls.parquet"), input_format="parquet", url_col="url", caption_col="caption",
             output_format="webdataset", output_folder=str(out), processes_count=1, thread_count=2, image_size=64,
             resize_mode="no", distributor="multiprocessing", enable_wandb=False, number_sample_per_shard=100,
             disallowed_header_directives=[], retries=0, timeout=5)
    shards = list_shards(str(out))
    assert len(shards) == 1
    samples = list(iter_shard(shards[0]))
    assert len(samples) == 12 and all(not s.error for s in samples)
    by_url = {s.meta["url"]: s for s in samples}
    for row in rows[:12]:
        s = by_url[row["url"]]
        assert s.caption == row["caption"] and s.meta["key"] == s.key and s.image_ext == "jpg"
    assert (out / "00000_stats.json").exists() and (out / "00000.parquet").exists()


def test_img2dataset_crawl_to_protected_shards(tmp_path, http_folder):
    """The documented ingestion path: img2dataset crawl -> mempipe protect -> protected shards."""
    from img2dataset import download

    from mempipe.cli import main

    folder, base = http_folder
    rows = []
    for i in range(30):
        pixels, caption, _ = make_sample(i, 80, seed=2)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=95)
        rows.append({"url": f"{base}/{i}.jpg", "caption": caption})
    pd.DataFrame(rows).to_parquet(tmp_path / "urls.parquet")
    crawl, out = tmp_path / "crawl", tmp_path / "protected"
    download(url_list=str(tmp_path / "urls.parquet"), input_format="parquet", url_col="url", caption_col="caption",
             output_format="webdataset", output_folder=str(crawl), processes_count=1, thread_count=2, image_size=64,
             resize_mode="center_crop", distributor="multiprocessing", enable_wandb=False, number_sample_per_shard=100,
             disallowed_header_directives=[], retries=0, timeout=5)
    cfg = tmp_path / "fast.yaml"
    cfg.write_text("outer_iters: 1\ntrain_steps: 3\npgd_steps: 2\nhotflip_iters: 1\ncandidates: 4\n")
    assert main(["protect", str(crawl), str(out), "--config", str(cfg), "--no-ray", "--quiet"]) == 0
    crawled = {s.key: s for s in iter_shard(str(crawl / "00000.tar"))}
    protected = list(iter_shard(str(out / "00000.tar")))
    assert {s.key for s in protected} == set(crawled) and len(protected) == 30
    for s in protected:
        assert s.caption.endswith(crawled[s.key].caption) and s.meta["url"] == crawled[s.key].meta["url"]
        assert s.meta["mempipe"]["max_delta"] <= 8

"""A real img2dataset crawl from a loopback HTTP server, read back and protected with mempipe."""
import pandas as pd
from PIL import Image

from mempipe_research.testing import fast_config as write_fast_config
from mempipe.cli import main
from mempipe.data.demo_data import make_sample
from mempipe.io.shards import iter_shard, list_shards


def crawl(tmp_path, http_folder, count: int, size: int, resize_mode: str, broken_links: int = 0):
    """Serve demo images, write a URL parquet, run img2dataset into webdataset shards."""
    from img2dataset import download

    folder, base = http_folder
    rows = []
    for i in range(count):
        pixels, caption, _ = make_sample(i, size, seed=1)
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=95)
        rows.append({"url": f"{base}/{i}.jpg", "caption": caption})
    rows += [{"url": f"{base}/missing{i}.jpg", "caption": "a broken link"} for i in range(broken_links)]
    pd.DataFrame(rows).to_parquet(tmp_path / "urls.parquet")
    out = tmp_path / "crawl"
    download(url_list=str(tmp_path / "urls.parquet"), input_format="parquet", url_col="url", caption_col="caption",
             output_format="webdataset", output_folder=str(out), processes_count=1, thread_count=2, image_size=64,
             resize_mode=resize_mode, distributor="multiprocessing", enable_wandb=False, number_sample_per_shard=100,
             disallowed_header_directives=[], retries=0, timeout=5)
    return out, rows[:count]


def test_img2dataset_output_reads_back(tmp_path, http_folder):
    out, rows = crawl(tmp_path, http_folder, 12, 64, "no", broken_links=1)
    shards = list_shards(str(out))
    assert len(shards) == 1
    samples = list(iter_shard(shards[0]))
    assert len(samples) == 12 and all(not s.error for s in samples)
    by_url = {s.meta["url"]: s for s in samples}
    for row in rows:
        s = by_url[row["url"]]
        assert s.caption == row["caption"] and s.meta["key"] == s.key and s.image_ext == "jpg"
    assert (out / "00000_stats.json").exists() and (out / "00000.parquet").exists()


def test_img2dataset_crawl_to_protected_shards(tmp_path, http_folder):
    """The documented ingestion path: img2dataset crawl -> mempipe protect -> protected shards."""
    crawled_dir, _ = crawl(tmp_path, http_folder, 30, 80, "center_crop")
    out = tmp_path / "protected"
    cfg = write_fast_config(tmp_path, outer_iters=1, train_steps=3)
    assert main(["protect", str(crawled_dir), str(out), "--config", str(cfg), "--no-ray", "--quiet",
                 "--provenance", "full"]) == 0
    crawled = {s.key: s for s in iter_shard(str(crawled_dir / "00000.tar"))}
    protected = list(iter_shard(str(out / "00000.tar")))
    assert {s.key for s in protected} == set(crawled) and len(protected) == 30
    for s in protected:
        assert s.caption.endswith(crawled[s.key].caption) and s.meta["url"] == crawled[s.key].meta["url"]
        assert s.meta["mempipe"]["max_delta"] <= 8

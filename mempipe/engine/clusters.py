"""Class-agnostic clusters: k-means (faiss) on surrogate image and/or caption features."""
from __future__ import annotations

import faiss
import numpy as np
import torch


def kmeans(features: torch.Tensor, n_clusters: int, seed: int, iterations: int = 25) -> tuple[torch.Tensor, np.ndarray]:
    """Cluster ids (N,) and centroids (C x d) for L2-normalised features."""
    x = np.ascontiguousarray(features.detach().float().cpu().numpy(), dtype=np.float32)
    n_clusters = max(1, min(n_clusters, len(x)))
    km = faiss.Kmeans(x.shape[1], n_clusters, niter=iterations, seed=seed, spherical=True, verbose=False,
                      min_points_per_centroid=1)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return torch.from_numpy(assign[:, 0].astype(np.int64)), km.centroids


def assign(features: torch.Tensor, centroids: np.ndarray) -> torch.Tensor:
    """Nearest centroid (inner product on normalised features) for new samples."""
    x = np.ascontiguousarray(features.detach().float().cpu().numpy(), dtype=np.float32)
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, ids = index.search(x, 1)
    return torch.from_numpy(ids[:, 0].astype(np.int64))

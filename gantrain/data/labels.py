"""Class labels beside the images, for class-conditional runs (``model.conditional=true``).

* ``mnist``, ``fashion_mnist``: the split's IDX label file (``*-labels-idx1-ubyte``), read by torchvision.
* ``folder``: torchvision's ImageFolder convention: ``data.root/<class>/<image>`` (deeper folders belong
  to their top-level class); classes are the sorted subfolder names, the label of an image is its
  subfolder's index. Images directly in ``data.root`` make the folder unlabelled, which is refused.
* ``celeba`` and ``sine`` have no classes and are refused.

The labels are one int64 tensor on the device, indexed exactly like the images (``Dataset.batch_labels``
uses the batch's own indices), so DDP shards, ``data.xflip`` and resume need nothing new.
"""

from __future__ import annotations

import os

import torch

from gantrain.data.base import Dataset, data_root, setting
from gantrain.data.folder import scan_images
from gantrain.data.mnist import load_mnist_like
from gantrain.errors import UserError

FOLDER_HINT = ("a labelled folder has one subfolder per class, data.root/<class>/<image> "
               "(torchvision's ImageFolder layout, e.g. data.root/cat/1.jpg and data.root/dog/2.jpg)")


def mnist_labels(cfg_data, name: str) -> tuple[torch.Tensor, list[str]]:
    split = str(setting(cfg_data, "split", "train"))
    _, targets = load_mnist_like(cfg_data, name, split=split)
    if name == "fashion_mnist":
        from torchvision import datasets

        return targets.long(), list(datasets.FashionMNIST.classes)
    return targets.long(), [str(k) for k in range(10)]


def folder_labels(cfg_data, stored: int) -> tuple[torch.Tensor, list[str]]:
    """Labels of the folder's images in the decoded cache's order (its sorted file list)."""
    root = data_root(cfg_data)
    files, _ = scan_images(root, recursive=True)
    parts = [os.path.relpath(path, root).split(os.sep) for path, _, _ in files]
    loose = [p[0] for p in parts if len(p) == 1]
    if loose:
        raise UserError(f"model.conditional=true needs class labels, but {root} holds images outside class "
                        f"subfolders (e.g. {loose[0]}): {FOLDER_HINT}.")
    names = sorted({p[0] for p in parts})
    if len(names) < 2:
        raise UserError(f"model.conditional=true needs at least two classes, but {root} has "
                        f"{len(names)} class subfolder ({', '.join(names)}): {FOLDER_HINT}.")
    if len(files) != stored:
        raise UserError(f"model.conditional=true: {len(files) - stored} of the {len(files)} image files in {root} "
                        "are unreadable, so images and labels would not line up; delete or fix them.")
    index = {n: k for k, n in enumerate(names)}
    return torch.tensor([index[p[0]] for p in parts], dtype=torch.int64), names


def check_labelled(name: str) -> None:
    """Refuse, before any decoding, a data set that never has classes."""
    if name in ("mnist", "fashion_mnist", "folder"):
        return
    if name == "celeba":
        raise UserError("model.conditional=true needs class labels, and data=celeba has none here: use mnist, "
                        f"fashion_mnist or data=folder where {FOLDER_HINT}.")
    else:
        raise UserError(f"model.conditional=true needs class-labelled images, and data={name} has no classes: use "
                        f"mnist, fashion_mnist or data=folder where {FOLDER_HINT}.")


def attach(ds: Dataset, cfg_data) -> Dataset:
    """Give ``ds`` its ``labels`` (on its device) and ``class_names``, or refuse data without classes."""
    name = str(cfg_data.name)
    check_labelled(name)
    if name in ("mnist", "fashion_mnist"):
        labels, names = mnist_labels(cfg_data, name)
    else:
        labels, names = folder_labels(cfg_data, ds.stored)
    if labels.shape[0] != ds.stored:
        raise UserError(f"data {name} has {ds.stored} images but {labels.shape[0]} labels: delete its files and "
                        "download them again (data.download=true).")
    ds.labels = labels.to(ds.device)
    ds.class_names = list(names)
    return ds

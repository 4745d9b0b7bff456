"""The extraction loop users write by hand today, as a standalone program: torchvision ResNet-50
with its classifier removed, a DataLoader whose worker processes decode with PIL, features saved
with np.save. It imports nothing from featx, so its start-up cost is PyTorch's alone.

    python benchmarks/eager_extract.py STATE_DICT IMAGE_FOLDER OUT.npy [--batch-size 32]
        [--resize 256 --crop 224 --interpolation bilinear]
"""

import argparse
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class ImageFolderFlat(Dataset):
    def __init__(self, paths, transform):
        self.paths = paths
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("state_dict")
    parser.add_argument("images")
    parser.add_argument("out")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--interpolation", default="bilinear")
    args = parser.parse_args()

    model = torchvision.models.resnet50()
    model.load_state_dict(torch.load(args.state_dict, weights_only=True))
    model.fc = torch.nn.Identity()
    model.eval()
    transform = transforms.Compose(
        [
            transforms.Resize(
                args.resize, interpolation=transforms.InterpolationMode(args.interpolation)
            ),
            transforms.CenterCrop(args.crop),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    root = Path(args.images)
    paths = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    loader = DataLoader(
        ImageFolderFlat(paths, transform), batch_size=args.batch_size, num_workers=args.workers
    )
    with torch.inference_mode():
        features = torch.cat([model(batch) for batch in loader]).numpy()
    np.save(args.out, features)


if __name__ == "__main__":
    main()
